;; The least a proxy-wasm HTTP filter can be: one callback, `proxy_on_request_headers`, that returns
;; Continue at once. No host call and no other callback the host would enter the VM for; the allocator
;; export the host insists on at load is never called. The benchmark's floor for any Wasm filter: what
;; Envoy and V8 cost per request before a filter does anything.
(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (i32.const 0)))
