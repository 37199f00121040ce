// `npm run build`: bundles the CLI into dist/ with esbuild (source maps beside each file). One file per lazily loaded
// command instead of hundreds of modules makes start-up cheap: the module loader, not our code, dominated it. Native
// and worker-thread packages stay external and load from node_modules. The verifier's evidence worker is a second
// entry, dist/verifier/evidence-worker.js, sharing chunks with the CLI. Type checking is `npm run typecheck`.
import { rm } from 'node:fs/promises'
import { build } from 'esbuild'

const EXTERNAL = [
  'better-sqlite3', // native addon
  'pg', // optional native binding, loaded by name
  'mysql2', // iconv-lite loads its encoding tables by name
  'pino', // starts its transports in worker threads by file path
  'pino-pretty', // required by name when --log-format pretty is asked for
  'fastify', // plugins are loaded by name at run time
]

await rm(new URL('../dist', import.meta.url), { recursive: true, force: true })
await build({
  entryPoints: {
    'cli/main': 'src/cli/main.ts',
    // started by file path from src/verifier/evidence-pool.ts (`../verifier/evidence-worker.js` from a chunk)
    'verifier/evidence-worker': 'src/verifier/evidence-worker.ts',
  },
  outdir: 'dist',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  sourcemap: true,
  sourcesContent: false,
  external: EXTERNAL,
  // Chunks two folders below the package root, like src/<folder>/<file>.ts, so `new URL('../../bin/…',
  // import.meta.url)` in bundled code still finds the package's files.
  chunkNames: 'chunks/[name]-[hash]',
  // Bundled CommonJS code calls require(); ES modules have none.
  banner: {
    js: "import { createRequire as keylimeCreateRequire } from 'node:module'\nconst require = keylimeCreateRequire(import.meta.url)",
  },
  logLevel: 'warning',
})
