//! The proxy-wasm ABI (0.2.1) as far as this filter uses it: the host functions it imports, each behind
//! a safe wrapper that turns a status other than success into a value (the SDK we replaced panicked on
//! most of them, which under `panic = "abort"` kills the worker's VM), and the allocator export through
//! which the host hands data over. Which context a callback is for is `exports`' business.

use alloc::vec::Vec;

use alloc::alloc::{Layout, alloc};
use core::cell::Cell;
use core::mem::ManuallyDrop;
use core::ptr::{null, null_mut};
use core::time::Duration;

/// A status other than `Ok` from a host call (the ABI's `WasmResult`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u32);

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // The names the SDK printed, for the statuses a call out or a shared-data write gives.
        match self.0 {
            1 => f.write_str("NotFound"),
            BAD_ARGUMENT => f.write_str("BadArgument"),
            8 => f.write_str("CasMismatch"),
            10 => f.write_str("InternalFailure"),
            n => write!(f, "status {n}"),
        }
    }
}

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
/// What Envoy answers, among others, for a call out to a cluster it does not have.
pub const BAD_ARGUMENT: u32 = 2;

/// What a stream callback tells the host: go on to the next filter, or hold the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Action {
    Continue = 0,
    Pause = 1,
    /// A body chunk only: hold the stream, its body buffered under flow control rather than up to a
    /// limit (`StopIterationAndWatermark`).
    Watermark = 2,
}

/// The log levels the filter writes at (the ABI's numbering).
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum LogLevel {
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

/// The ABI's header maps: the request's, the response's, a callout's answer's.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum Headers {
    Request = 0,
    Response = 2,
    CallResponse = 6,
}

/// The ABI's buffer types.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum Buffer {
    RequestBody = 0,
    HttpCallResponseBody = 4,
    PluginConfiguration = 7,
}

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer: u32,
        start: usize,
        max_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_continue_stream(stream: u32) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_http_call(
        cluster: *const u8,
        cluster_size: usize,
        headers: *const u8,
        headers_size: usize,
        body: *const u8,
        body_size: usize,
        trailers: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        token: *mut u32,
    ) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
}

/// Per-VM state in a plain `static`. The module runs on one thread: it is built for `wasm32` without the
/// `atomics` feature (refused below), where nothing can share it. `thread_local!` does the same job
/// through `LocalKey`'s generic accessors, which at `opt-level = "z"` stay calls: about 270 instructions
/// per logged-in request in V8.
pub struct VmLocal<T>(pub T);

// SAFETY: one thread only (see `VmLocal`).
unsafe impl<T> Sync for VmLocal<T> {}

impl<T> VmLocal<T> {
    /// Runs `f` on the value (the shape of `LocalKey::with`).
    #[inline(always)]
    pub fn with<R>(&'static self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.0)
    }
}

#[cfg(target_feature = "atomics")]
compile_error!(
    "host.rs keeps state in plain statics: build without the atomics feature (one thread)"
);

/// No buffer: a null address and no capacity.
const NO_BUFFER: (*mut u8, usize) = (null_mut(), 0);

/// The last request's header buffer (address, capacity), kept for the next request's: a request's
/// headers then cost no allocator call (dlmalloc's path for a block of a kilobyte or more ran about 250
/// instructions and 30 cache lines of code per request, each line a miss once Envoy has run in between;
/// `heap`'s, which replaced it, is shorter, and this still saves it).
static SPARE: VmLocal<Cell<(*mut u8, usize)>> = VmLocal(Cell::new(NO_BUFFER));
/// Set by `get_header_map_pairs` for the length of its host call: the spare buffer, offered to
/// `proxy_on_memory_allocate`, which empties it when it lends the buffer out.
static OFFER: VmLocal<Cell<(*mut u8, usize)>> = VmLocal(Cell::new(NO_BUFFER));

/// Gives a buffer kept as (address, capacity) back to the allocator; none is nothing to do.
fn release((data, capacity): (*mut u8, usize)) {
    if !data.is_null() {
        // SAFETY: every kept buffer is a `Vec<u8>`'s allocation of `capacity` bytes, taken apart by
        // `recycle_header_buffer` and owned by nothing else.
        drop(unsafe { Vec::from_raw_parts(data, 0, capacity) });
    }
}

/// The host allocates every buffer it returns to us through this export, and [`owned`] gives it back
/// (during `get_header_map_pairs`, the spare header buffer is lent instead when it is large enough).
/// A null answer (out of memory) makes the host call that needed the buffer fail instead of the VM.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let offer = OFFER.0.get();
    if size > 0 && offer.1 >= size {
        OFFER.0.set(NO_BUFFER);
        return offer.0;
    }
    match Layout::from_size_align(size, 1) {
        // A zero-sized buffer needs no memory; `owned` turns this pointer into an empty `Vec`.
        Ok(_) if size == 0 => core::ptr::NonNull::<u8>::dangling().as_ptr(),
        // SAFETY: the layout is valid and not zero-sized; `owned` frees it with the same layout
        // (a `Vec<u8>` whose capacity is `size`).
        Ok(layout) => unsafe { alloc(layout) },
        Err(_) => null_mut(),
    }
}

/// Takes over a buffer the host returned: null means there is none.
///
/// # Safety
/// `data` is null, or the host got it from [`proxy_on_memory_allocate`]`(size)` and nothing else owns it.
unsafe fn owned(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        return None;
    }
    // SAFETY: by the caller's promise `data` is `size` bytes allocated with the global allocator and
    // `Layout::from_size_align(size, 1)`, the layout a `Vec<u8>` of capacity `size` frees with; the host
    // wrote all `size` bytes before returning it.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// Keeps a request's header buffer for the next request's headers. Up to 64 KiB: a request with more
/// headers than that is rare, and its buffer is let go.
pub fn recycle_header_buffer(bytes: Vec<u8>) {
    if bytes.capacity() == 0 || bytes.capacity() > 64 * 1024 {
        return;
    }
    let mut bytes = ManuallyDrop::new(bytes);
    release(SPARE.0.replace((bytes.as_mut_ptr(), bytes.capacity())));
}

/// Null for an empty slice, as the SDK passed "no body": an empty slice's pointer is merely non-null.
fn ptr_or_null(b: &[u8]) -> *const u8 {
    if b.is_empty() { null() } else { b.as_ptr() }
}

fn check(status: u32) -> Result<(), Status> {
    if status == OK {
        Ok(())
    } else {
        Err(Status(status))
    }
}

/// Writes a line to Envoy's log.
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the pointer and length describe `message`, which outlives the call; the host only reads.
    unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) };
}

/// Seconds since the Unix epoch by the host's clock. If the host will not say (Envoy always does), a time
/// far in the future: every session, login and token then reads as expired, so the failure closes
/// (no 0, which would make everything look fresh), and sums like `now + ttl` still cannot overflow.
pub fn now_secs() -> u64 {
    now_millis() / 1000
}

/// The host's clock in milliseconds, as [`now_secs`] (far ahead when the host will not say).
pub fn now_millis() -> u64 {
    let mut nanos = 0u64;
    // SAFETY: the host writes one u64 through a pointer to a local.
    let status = unsafe { proxy_get_current_time_nanoseconds(&mut nanos) };
    if status == OK {
        nanos / 1_000_000
    } else {
        u64::MAX / 4
    }
}

/// Asks for `on_tick` every `period` (per root context).
pub fn set_tick_period(period: Duration) -> Result<(), Status> {
    let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: no pointers.
    check(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

/// Up to `max_size` bytes of `buffer` from `start`; `None` when there are none or the host refuses.
pub fn get_buffer(buffer: Buffer, start: usize, max_size: usize) -> Option<Vec<u8>> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: the host writes a pointer and a size through pointers to locals.
    let status =
        unsafe { proxy_get_buffer_bytes(buffer as u32, start, max_size, &mut data, &mut size) };
    if status != OK {
        return None;
    }
    // SAFETY: on success the host returned a buffer it allocated through `proxy_on_memory_allocate`.
    unsafe { owned(data, size) }
}

/// All pairs of `map`, serialized the way `headers::HeaderBlock` reads them.
/// The spare buffer of [`recycle_header_buffer`] is offered to the host for them.
pub fn get_header_map_pairs(map: Headers) -> Option<Vec<u8>> {
    let mut data = null_mut();
    let mut size = 0;
    let spare = SPARE.0.replace(NO_BUFFER);
    OFFER.0.set(spare);
    // SAFETY: the host writes a pointer and a size through pointers to locals.
    let status = unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
    // Still offered: the host did not take it, and it stays the spare. Offered to no other call.
    let unused = OFFER.0.replace(NO_BUFFER);
    SPARE.0.set(unused);
    let lent = if unused.0.is_null() { spare } else { NO_BUFFER };
    if status == OK && !lent.0.is_null() && data == lent.0 {
        // SAFETY: `data` is the lent spare, a `Vec<u8>`'s allocation of `lent.1` bytes, which
        // `proxy_on_memory_allocate` lent for `size` bytes at most; the host wrote all of them.
        return Some(unsafe { Vec::from_raw_parts(data, size, lent.1) });
    }
    // Lent but not handed back (a failed call): ours again.
    release(lent);
    if status != OK {
        return None;
    }
    // SAFETY: on success the host returned a buffer it allocated through `proxy_on_memory_allocate`.
    unsafe { owned(data, size) }
}

/// The first value of header `key` in `map` (raw bytes; `None` if absent).
pub fn get_header(map: Headers, key: &str) -> Option<Vec<u8>> {
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: `key` outlives the call; the host writes a pointer and a size through pointers to locals.
    let status = unsafe {
        proxy_get_header_map_value(map as u32, key.as_ptr(), key.len(), &mut data, &mut size)
    };
    if status != OK {
        return None;
    }
    // SAFETY: on success the host returned a buffer it allocated through `proxy_on_memory_allocate`
    // (null for an empty value).
    Some(unsafe { owned(data, size) }.unwrap_or_default())
}

/// Sets header `key` of `map` to `value` (replacing every value it had), or removes it (`None`).
pub fn set_header(map: Headers, key: &str, value: Option<&str>) -> Result<(), Status> {
    // SAFETY: key and value outlive the calls; the host only reads them.
    check(unsafe {
        match value {
            Some(v) => proxy_replace_header_map_value(
                map as u32,
                key.as_ptr(),
                key.len(),
                v.as_ptr(),
                v.len(),
            ),
            None => proxy_remove_header_map_value(map as u32, key.as_ptr(), key.len()),
        }
    })
}

/// Adds one more value of header `key` to `map`.
pub fn add_header(map: Headers, key: &str, value: &str) -> Result<(), Status> {
    // SAFETY: key and value outlive the call; the host only reads them.
    check(unsafe {
        proxy_add_header_map_value(
            map as u32,
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// The value of shared-data `key` (`None` if it has none) and its compare-and-swap version (`None`
/// if the key does not exist).
pub fn get_shared_data(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Status> {
    let mut data = null_mut();
    let mut size = 0;
    let mut cas = 0u32;
    // SAFETY: `key` outlives the call; the host writes through pointers to locals.
    let status =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    match status {
        OK => {
            // SAFETY: on success the host returned a buffer it allocated through
            // `proxy_on_memory_allocate` (null for an empty value).
            let value = unsafe { owned(data, size) };
            Ok((value, (cas != 0).then_some(cas)))
        }
        NOT_FOUND => Ok((None, None)),
        other => Err(Status(other)),
    }
}

/// Writes shared-data `key`; with `cas`, only if nobody wrote it since that version was read.
pub fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
    // SAFETY: key and value outlive the call; the host only reads them.
    check(unsafe {
        proxy_set_shared_data(
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
            cas.unwrap_or(0),
        )
    })
}

/// Lets the current context's paused request go on.
pub fn resume_request() -> Result<(), Status> {
    // SAFETY: no pointers; stream type 0 is the HTTP request.
    check(unsafe { proxy_continue_stream(0) })
}

/// Answers the current context's request locally. `headers` is a serialized map (`headers::encode`).
pub fn send_response(status: u32, headers: &[u8], body: &[u8]) -> Result<(), Status> {
    // SAFETY: headers and body outlive the call; the host only reads them. No details, no gRPC status.
    check(unsafe {
        proxy_send_local_response(
            status,
            null(),
            0,
            ptr_or_null(body),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

/// Sends a request to `cluster`; its answer comes to `proxy_on_http_call_response` under the token
/// returned. `headers` is a serialized map (`headers::encode`).
pub fn http_call(
    cluster: &str,
    headers: &[u8],
    body: &[u8],
    timeout: Duration,
) -> Result<u32, Status> {
    // An empty map: a zero count.
    let trailers = [0u8; 4];
    let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    let mut token = 0u32;
    // SAFETY: every buffer outlives the call and is only read; the host writes the token to a local.
    let status = unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            headers.as_ptr(),
            headers.len(),
            ptr_or_null(body),
            body.len(),
            trailers.as_ptr(),
            trailers.len(),
            timeout_ms,
            &mut token,
        )
    };
    check(status).map(|()| token)
}

/// Makes `context_id` the context later host calls act on (its headers, its local response); fails
/// when the host no longer has that context.
pub fn set_effective_context(context_id: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_set_effective_context(context_id) })
}

/// Defines counter `name` (Envoy's stat name) and returns its id.
pub fn define_counter(name: &str) -> Result<u32, Status> {
    let mut id = 0u32;
    // SAFETY: `name` outlives the call; the host writes the id to a local. Kind 0 is a counter.
    let status = unsafe { proxy_define_metric(0, name.as_ptr(), name.len(), &mut id) };
    check(status).map(|()| id)
}

/// Adds `n` to a metric.
pub fn increment_metric(id: u32, n: i64) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_increment_metric(id, n) })
}
