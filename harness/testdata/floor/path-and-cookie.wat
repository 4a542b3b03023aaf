;; Floor module `path-and-cookie`: harness/testdata/empty.wat plus the values of :path and cookie (two host calls, two allocations). See harness/floor.sh.
(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 4)
  (data (i32.const 16) ":path")
  (data (i32.const 24) "cookie")
  (data (i32.const 32) "x-bench")
  (data (i32.const 48) "1")
  (data (i32.const 56) "x-bench2")
  (func (export "proxy_abi_version_0_2_1"))
  ;; Values are read and dropped: one scratch buffer from 4096 on serves every allocation.
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (if (result i32) (i32.le_u (local.get $size) (i32.const 200000)) (then (i32.const 4096)) (else (i32.const 0))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $get (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 64) (i32.const 68)))
    (drop (call $get (i32.const 0) (i32.const 24) (i32.const 6) (i32.const 64) (i32.const 68)))
    (i32.const 0)))
