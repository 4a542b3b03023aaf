// Runs a wasm32-wasip1 test binary in Node's V8 (the engine Envoy embeds): cargo's target runner.
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';
import process from 'node:process';

const [module, ...args] = process.argv.slice(2);
const wasi = new WASI({ version: 'preview1', args: [module, ...args], env: {}, returnOnExit: true });
const compiled = await WebAssembly.compile(await readFile(module));
const imports = wasi.getImportObject();
// The proxy-wasm host functions: linked in, never called by a unit test.
for (const { module: from, name } of WebAssembly.Module.imports(compiled)) {
  if (from === 'wasi_snapshot_preview1') continue;
  imports[from] ??= {};
  imports[from][name] = () => {
    throw new Error(`host function ${from}.${name} called in a unit test`);
  };
}
const instance = await WebAssembly.instantiate(compiled, imports);
// The filter exports `_initialize` for Envoy, which a command module (the test binary) may not have.
const { _start, memory } = instance.exports;
process.exitCode = wasi.start({ exports: { _start, memory } });
