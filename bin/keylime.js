#!/usr/bin/env node
// Runs the compiled CLI in dist/ (`npm run build`; `npm ci` builds it through the prepare script). With
// KEYLIME_FROM_SOURCE=1 it runs src/ through tsx instead: the tests do, so they never run a stale dist/.
// Stacks name TypeScript lines (dist/ has source maps), but only when asked for: reading the maps of every module
// would cost each command's start-up.
if (process.argv.includes('--debug') || process.env.KEYLIME_DEBUG === '1') process.setSourceMapsEnabled(true)
// `keylime … | head`: a reader that stops early is not an error.
process.stdout.on('error', (err) => {
  if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0)
  throw err
})
let main
if (process.env.KEYLIME_FROM_SOURCE === '1') {
  const { register } = await import('tsx/esm/api')
  register()
  main = await import('../src/cli/main.ts')
} else {
  main = await import('../dist/cli/main.js').catch((err) => {
    if (err?.code !== 'ERR_MODULE_NOT_FOUND' || !String(err.message).includes('dist/cli/main.js')) throw err
    process.stderr.write('keylime: dist/ is missing (run `npm run build`, or set KEYLIME_FROM_SOURCE=1)\n')
    process.exit(5)
  })
}
await main.run(process.argv)
