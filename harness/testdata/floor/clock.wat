;; Floor module `clock`: harness/testdata/empty.wat plus one host call that reads the clock. See harness/floor.sh.
(module
  (import "env" "proxy_get_current_time_nanoseconds" (func $time (param i32) (result i32)))
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
    (drop (call $time (i32.const 64)))
    (i32.const 0)))
