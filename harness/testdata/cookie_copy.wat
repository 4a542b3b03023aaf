;; The Lua copy's job (`lua-copy`) as a Wasm module: read `cookie`, take `_oidc_session`'s value, set
;; `authorization: Bearer <value>`. The benchmark's "least a Wasm filter doing this job costs" row: no
;; SDK, no allocator, no check of the session, the cookie left in `Cookie`; the exports of
;; set_header.wat. (The benchmark's session cookie is one chunk named `_oidc_session`.)
(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 8)
  (data (i32.const 16) "cookie")
  (data (i32.const 32) "authorization")
  (data (i32.const 80) "_oidc_session=")
  (data (i32.const 262144) "Bearer ")
  (func (export "proxy_abi_version_0_2_1"))
  ;; One scratch buffer from 65536 on serves the one allocation per request.
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (if (result i32) (i32.le_u (local.get $size) (i32.const 131072)) (then (i32.const 65536)) (else (i32.const 0))))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $p i32) (local $end i32) (local $i i32) (local $k i32) (local $v i32) (local $n i32)
    (if (call $get (i32.const 0) (i32.const 16) (i32.const 6) (i32.const 64) (i32.const 68))
      (then (return (i32.const 0))))
    (local.set $p (i32.load (i32.const 64)))
    (local.set $end (i32.add (local.get $p) (i32.load (i32.const 68))))
    (local.set $i (local.get $p))
    ;; find "_oidc_session=" at the start or after a space or ';'
    (block $found
      (loop $scan
        (if (i32.gt_u (i32.add (local.get $i) (i32.const 14)) (local.get $end)) (then (return (i32.const 0))))
        (if (i32.or (i32.eq (local.get $i) (local.get $p))
                    (i32.or (i32.eq (i32.load8_u (i32.sub (local.get $i) (i32.const 1))) (i32.const 32))
                            (i32.eq (i32.load8_u (i32.sub (local.get $i) (i32.const 1))) (i32.const 59))))
          (then
            (local.set $k (i32.const 0))
            (block $miss
              (loop $cmp
                (br_if $miss (i32.ne (i32.load8_u (i32.add (local.get $i) (local.get $k)))
                                     (i32.load8_u (i32.add (i32.const 80) (local.get $k)))))
                (local.set $k (i32.add (local.get $k) (i32.const 1)))
                (br_if $cmp (i32.lt_u (local.get $k) (i32.const 14))))
              (br $found))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $scan)))
    ;; the value runs to ';' or the end: 16 bytes at a time, then byte by byte
    (local.set $v (i32.add (local.get $i) (i32.const 14)))
    (local.set $n (local.get $v))
    (block $tail
      (loop $wide
        (br_if $tail (i32.gt_u (i32.add (local.get $n) (i32.const 16)) (local.get $end)))
        (br_if $tail (v128.any_true (i8x16.eq (v128.load (local.get $n)) (i8x16.splat (i32.const 59)))))
        (local.set $n (i32.add (local.get $n) (i32.const 16)))
        (br $wide)))
    (block $done
      (loop $narrow
        (br_if $done (i32.ge_u (local.get $n) (local.get $end)))
        (br_if $done (i32.eq (i32.load8_u (local.get $n)) (i32.const 59)))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (br $narrow)))
    (if (i32.eq (local.get $n) (local.get $v)) (then (return (i32.const 0))))
    ;; "Bearer " in place of the name's last 7 bytes: no copy of the value
    (memory.copy (i32.sub (local.get $v) (i32.const 7)) (i32.const 262144) (i32.const 7))
    (drop (call $replace (i32.const 0) (i32.const 32) (i32.const 13)
      (i32.sub (local.get $v) (i32.const 7)) (i32.add (i32.sub (local.get $n) (local.get $v)) (i32.const 7))))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32)))
