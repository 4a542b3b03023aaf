;; The least a Wasm filter can do per request: read one request header (`:path`) and set one
;; (`x-bench: 1`). The benchmark's "Wasm at all" row: the cost of entering the VM and two host
;; calls, with no allocator, no SDK and no logic.
(module
  (import "env" "proxy_get_header_map_value"
    (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value"
    (func $replace_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) ":path")
  (data (i32.const 32) "x-bench")
  (data (i32.const 48) "1")
  ;; 64 and 68: where the host writes the address and size of a header value.
  (func (export "proxy_abi_version_0_2_1"))
  ;; Values are read and dropped, so one scratch buffer from 1024 on serves every allocation.
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (if (result i32) (i32.le_u (local.get $size) (i32.const 130048))
      (then (i32.const 1024))
      (else (i32.const 0))))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    ;; map type 0: the request headers.
    (drop (call $get_header (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 64) (i32.const 68)))
    (drop (call $replace_header (i32.const 0) (i32.const 32) (i32.const 7) (i32.const 48) (i32.const 1)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32)))
