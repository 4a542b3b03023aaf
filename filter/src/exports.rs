//! The proxy-wasm callbacks the module exports, and which context each one is for.
//!
//! Only the callbacks the filter acts on are exported. The host treats a missing one as having nothing to
//! do (proxy-wasm-cpp-host: `onDone` answers "done", `onLog`, `onVmStart` and the body, trailer, stream,
//! gRPC, queue and foreign-function callbacks return at once) without entering the VM: for a request that
//! spares a trip into the VM for `proxy_on_done`, `proxy_on_log`, `proxy_on_delete` and each response body
//! chunk.
//!
//! Without `proxy_on_delete`, the module is not told when a context ends. What it keeps of one (a request
//! waiting for a callout, a body or a renewal; a root context replaced by a new configuration) is let go on
//! the next tick of a root context, once the host no longer knows the context's id (`sweep`). The host
//! numbers contexts in order and does not reuse an id.

use alloc::vec::Vec;

use core::cell::RefCell;
use core::hash::BuildHasherDefault;

use crate::adapter::{self, Http, Root};
use crate::config::Config;
use crate::host::{self, Action, VmLocal};
use crate::idhash::IdMap;

/// Root contexts by id: one per plugin configuration that shares this VM (usually one).
static ROOTS: VmLocal<RefCell<Vec<(u32, Root)>>> = VmLocal(RefCell::new(Vec::new()));
/// Live requests by context id: looked up on every callback, hence the cheap hash.
static REQUESTS: VmLocal<RefCell<IdMap<u32, Http>>> =
    VmLocal(RefCell::new(IdMap::with_hasher(BuildHasherDefault::new())));
/// Callouts in flight: token, and the context that made it. The host answers every callout on the
/// root context, so the owner is ours to remember.
static CALLOUTS: VmLocal<RefCell<Vec<(u32, u32)>>> = VmLocal(RefCell::new(Vec::new()));
/// In a VM with several root contexts: requests made but not yet at their headers, and their root.
static FRESH: VmLocal<RefCell<Vec<(u32, u32)>>> = VmLocal(RefCell::new(Vec::new()));

/// Requests held at their headers while the IdP's documents are on their way (`Http::rerun`).
static HELD: VmLocal<RefCell<Vec<u32>>> = VmLocal(RefCell::new(Vec::new()));

/// At most this many requests are held per VM; more are answered 503 at once.
const MAX_HELD: usize = 128;

/// Holds request context `id` until the next answer to a root context's fetch, or its next tick;
/// `false` when `MAX_HELD` requests wait already (or the list is busy).
pub fn hold(id: u32) -> bool {
    HELD.with(|held| {
        let Ok(mut held) = held.try_borrow_mut() else {
            return false;
        };
        let room = held.len() < MAX_HELD;
        if room {
            held.push(id);
        }
        room
    })
}

/// Runs the held requests again: each goes on, is answered, or is held once more; after
/// `adapter::FINISH_PER_CALL` that went on or were answered, the rest wait for the next tick. `true`
/// when some are left. The last thing a callback does: it switches the effective context to each
/// request.
fn rerun_held() -> bool {
    let Ok(held) = HELD.with(|held| held.try_borrow_mut().map(|mut h| core::mem::take(&mut *h)))
    else {
        return false;
    };
    let mut finished = 0;
    let mut left = Vec::new();
    for id in held {
        if finished == adapter::FINISH_PER_CALL {
            left.push(id);
            continue;
        }
        // A request whose client went away is gone, or soon swept: nothing to run.
        with_request(id, |http| {
            if host::set_effective_context(id).is_err() {
                return;
            }
            match http.rerun() {
                Some(Action::Continue) => {
                    let _ = host::resume_request();
                }
                Some(_) => {}
                None => return,
            }
            finished += 1;
        });
    }
    HELD.with(|held| {
        if let Ok(mut held) = held.try_borrow_mut() {
            held.extend_from_slice(&left);
        }
    });
    !left.is_empty()
}

/// Remembers that the answer to callout `token` goes to context `owner`.
pub fn register_callout(token: u32, owner: u32) {
    CALLOUTS.with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            c.push((token, owner));
        }
    });
}

/// Runs `f` on root context `id`; `None` if there is none (or it is busy: the host does not re-enter).
fn with_root<T>(id: u32, f: impl FnOnce(&mut Root) -> T) -> Option<T> {
    ROOTS.with(|roots| {
        let mut roots = roots.try_borrow_mut().ok()?;
        let (_, root) = roots.iter_mut().find(|(r, _)| *r == id)?;
        Some(f(root))
    })
}

/// The id of the VM's root context when it has exactly one, the usual case: then a request needs no record
/// of its root between `proxy_on_context_create` and its headers.
fn sole_root() -> Option<u32> {
    ROOTS.with(|roots| match roots.try_borrow().ok()?.as_slice() {
        [(id, _)] => Some(*id),
        _ => None,
    })
}

/// Keeps request context `id` for its later callbacks.
fn keep(id: u32, http: Http) {
    REQUESTS.with(|requests| {
        if let Ok(mut requests) = requests.try_borrow_mut() {
            requests.insert(id, http);
        }
    });
}

/// Runs `f` on request context `id`; `None` if there is none.
fn with_request<T>(id: u32, f: impl FnOnce(&mut Http) -> T) -> Option<T> {
    REQUESTS.with(|requests| Some(f(requests.try_borrow_mut().ok()?.get_mut(&id)?)))
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_context_create(context_id: u32, root_context_id: u32) {
    if root_context_id == 0 {
        ROOTS.with(|roots| {
            if let Ok(mut roots) = roots.try_borrow_mut() {
                // A root whose configuration failed is started again under the same id (the host
                // retries it): one entry per id, or requests could never take the one-root path.
                roots.retain(|(id, _)| *id != context_id);
                roots.push((context_id, Root::new(context_id)));
            }
        });
        return;
    }
    if sole_root() == Some(root_context_id) {
        return;
    }
    FRESH.with(|fresh| {
        if let Ok(mut fresh) = fresh.try_borrow_mut() {
            fresh.push((context_id, root_context_id));
        }
    });
}

/// Runs `f` on the root context of request `context_id`, at its headers: the VM's only one, or the one
/// `proxy_on_context_create` recorded for it.
fn with_root_of<T>(context_id: u32, f: impl FnOnce(&mut Root) -> T) -> Option<T> {
    ROOTS.with(|roots| {
        let mut roots = roots.try_borrow_mut().ok()?;
        let root = match roots.as_mut_slice() {
            [(_, root)] => root,
            several => {
                let id = FRESH.with(|fresh| {
                    let mut fresh = fresh.try_borrow_mut().ok()?;
                    let at = fresh.iter().position(|(id, _)| *id == context_id)?;
                    Some(fresh.swap_remove(at).1)
                })?;
                several.iter_mut().find(|(r, _)| *r == id).map(|(_, r)| r)?
            }
        };
        Some(f(root))
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_configure(root_context_id: u32, _configuration_size: usize) -> u32 {
    // A new configuration comes as a new root context beside the old one, which still serves the
    // requests that began under it: what the old one knows of the IdP is where the new one starts.
    ROOTS.with(|roots| {
        let Ok(mut roots) = roots.try_borrow_mut() else {
            return 0;
        };
        let Some(at) = roots.iter().position(|(id, _)| *id == root_context_id) else {
            return 0;
        };
        let (id, mut root) = roots.swap_remove(at);
        let known = |like: &Config| roots.iter().find_map(|(_, r)| r.provider_for(like));
        let configured = root.on_configure(&known);
        roots.push((id, root));
        u32::from(configured)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_tick(root_context_id: u32) {
    sweep(root_context_id);
    let waiting = give_up_waits(root_context_id);
    with_root(root_context_id, |root| {
        let parked = root.on_tick();
        // (A re-run request never reaches for the root contexts.)
        let held = rerun_held();
        root.pace(parked || held || waiting);
    });
}

/// Lets the requests that have waited `callout_timeout` for their renewal's call go on (`Http::give_up`;
/// within the table's borrow, as an answer to a callout is carried out): at most
/// [`adapter::FINISH_PER_CALL`], as for parked requests (found in review: a stall that met hundreds of
/// renewals on a worker answered them all in one tick, nested on V8's stack); `true` when some are left
/// for the next (fast) tick.
fn give_up_waits(root_context_id: u32) -> bool {
    let now = host::now_millis();
    let mut left = adapter::FINISH_PER_CALL;
    let more = REQUESTS.with(|requests| {
        let Ok(mut requests) = requests.try_borrow_mut() else {
            return false;
        };
        for (id, http) in requests.iter_mut() {
            if http.gives_up_by(now) {
                if left == 0 {
                    return true;
                }
                if host::set_effective_context(*id).is_ok() {
                    left -= 1;
                    http.give_up();
                }
            }
        }
        false
    });
    let _ = host::set_effective_context(root_context_id);
    more
}

/// Lets go of what is kept for contexts that have ended (the host no longer knows their ids), then makes
/// `root_context_id` the effective context again. Dropping a request releases a renewal it claimed.
fn sweep(root_context_id: u32) {
    let alive = |id: u32| host::set_effective_context(id).is_ok();
    let now = host::now_secs();
    // An ended request that waits for the IdP's answer to its renewal, or for keys, is kept for it.
    let ended: Vec<(u32, Http)> = REQUESTS.with(|requests| match requests.try_borrow_mut() {
        Ok(mut requests) => requests
            .extract_if(|id, http| !http.awaits_answer(now) && !alive(*id))
            .collect(),
        Err(_) => Vec::new(),
    });
    let kept = |id: u32| REQUESTS.with(|r| r.try_borrow().is_ok_and(|r| r.contains_key(&id)));
    // Dropped outside the table's borrow: `Http`'s `Drop` makes host calls.
    drop(ended);
    // (One `retain` for both lists, not one per closure.)
    let prune = |list: &RefCell<Vec<(u32, u32)>>, keep: &dyn Fn(&(u32, u32)) -> bool| {
        if let Ok(mut list) = list.try_borrow_mut() {
            list.retain(keep);
        }
    };
    FRESH.with(|fresh| prune(fresh, &|(id, _)| alive(*id)));
    // An ended context's callouts are forgotten (but those of a request kept above): an answer that still
    // comes (the host sends every callout from the root context and does not cancel it) finds no owner
    // and is dropped.
    CALLOUTS.with(|callouts| prune(callouts, &|(_, owner)| kept(*owner) || alive(*owner)));
    // Taken out in order by `Vec::remove` (`extract_if` and its `collect` took 650 bytes for this).
    let ended_roots: Vec<(u32, Root)> = ROOTS.with(|roots| {
        let mut ended = Vec::new();
        if let Ok(mut roots) = roots.try_borrow_mut() {
            let mut i = 0;
            while let Some((id, _)) = roots.get(i) {
                if *id != root_context_id && !alive(*id) {
                    ended.push(roots.remove(i));
                } else {
                    i += 1;
                }
            }
        }
        ended
    });
    drop(ended_roots);
    let _ = host::set_effective_context(root_context_id);
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_headers(
    context_id: u32,
    _headers: usize,
    end_of_stream: u32,
) -> u32 {
    let fresh = with_root_of(context_id, |root| root.create_http_context(context_id));
    let Some(mut http) = fresh.flatten() else {
        // A request without a context of ours would pass unchecked: refuse it instead. (A root context
        // without an accepted configuration makes none.)
        adapter::fail();
        return Action::Pause as u32;
    };
    let action = http.on_request_headers(end_of_stream != 0);
    // Kept while it waits for a callout, a body or a renewal, or has cookies for the response.
    if !http.is_idle() {
        keep(context_id, http);
    }
    action as u32
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_body(
    context_id: u32,
    body_size: usize,
    end_of_stream: u32,
) -> u32 {
    with_request(context_id, |http| {
        http.on_request_body(body_size, end_of_stream != 0)
    })
    .unwrap_or(Action::Continue) as u32
}

/// Called only for a request that has trailers (HTTP/2): see [`crate::adapter::Http::on_request_trailers`].
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_request_trailers(context_id: u32, _trailers: usize) -> u32 {
    with_request(context_id, |http| http.on_request_trailers()).unwrap_or(Action::Continue) as u32
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_response_headers(
    context_id: u32,
    _headers: usize,
    _end_of_stream: u32,
) -> u32 {
    let Some((action, idle)) = with_request(context_id, |http| {
        (http.on_response_headers(), http.is_idle())
    }) else {
        return Action::Continue as u32;
    };
    // Its cookies sent and nothing else to wait for: let go now, not when the stream ends (a WebSocket or
    // a stream of events that got a renewal's cookie stayed in the tick's sweep for its life). Dropped
    // outside the table's borrow.
    if idle {
        let done = REQUESTS.with(|r| {
            r.try_borrow_mut()
                .ok()
                .and_then(|mut r| r.remove(&context_id))
        });
        drop(done);
    }
    action as u32
}

#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_http_call_response(
    _root_context_id: u32,
    token: u32,
    _headers: usize,
    body_size: usize,
    _trailers: usize,
) {
    let owner = CALLOUTS.with(|c| {
        let mut c = c.try_borrow_mut().ok()?;
        let at = c.iter().position(|(t, _)| *t == token)?;
        Some(c.swap_remove(at).1)
    });
    let Some(owner) = owner else { return };
    // The answer arrives on the root context; the owner's host calls (its headers, its local response,
    // resuming it) need the owner's context. A request that has ended has nothing left to answer.
    let answered = with_request(owner, |http| {
        if host::set_effective_context(owner).is_ok() {
            http.on_http_call_response(token, body_size);
        } else {
            http.on_orphaned_call_response(token, body_size);
        }
    });
    if answered.is_none() {
        with_root(owner, |root| {
            if host::set_effective_context(owner).is_ok() {
                root.on_http_call_response(token, body_size);
            }
        });
        if rerun_held() {
            with_root(owner, |root| root.pace(true));
        }
    }
}
