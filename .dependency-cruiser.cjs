/**
 * The import table of ARCHITECTURE.md ("Who owns what"), enforced: each folder imports only the folders its row
 * names, plus itself and node built-ins.
 */

/** A rule: files under `folder` may import from src/ only `folder` itself and `allowed`. */
function layer(name, folder, allowed, comment) {
  const ok = [folder, ...allowed].join('|')
  return {
    name,
    severity: 'error',
    comment,
    from: { path: `^src/${folder}/` },
    to: { path: '^src/', pathNot: `^src/(${ok})/` },
  }
}

module.exports = {
  forbidden: [
    layer('common-is-the-base', 'common', [], 'src/common imports nothing of ours'),
    layer('tpm-is-a-library', 'tpm', [], 'src/tpm imports only itself and node built-ins'),
    layer('crypto-is-a-library', 'crypto', ['tpm', 'common'], 'crypto without a TPM: no services, no I/O layers'),
    layer(
      'evidence-is-pure',
      'evidence',
      ['tpm', 'crypto', 'common'],
      'src/evidence may use the TPM codecs, crypto and common helpers, nothing with I/O',
    ),
    {
      name: 'evidence-no-io-builtins',
      severity: 'error',
      comment: 'verification functions take bytes and return verdicts: no fs, net or child processes',
      from: { path: '^src/evidence/' },
      to: {
        dependencyTypes: ['core'],
        path: '^(fs|node:fs|net|node:net|http|node:http|https|node:https|child_process|node:child_process|fs/promises|node:fs/promises)$',
      },
    },
    layer('payload-is-a-library', 'payload', ['crypto', 'common'], 'payload archives: crypto and common only'),
    layer('api-is-plumbing', 'api', ['common'], 'REST plumbing and wire schemas: no service, database or config'),
    layer('db-is-storage', 'db', ['api', 'common'], 'databases and repositories: wire constants from src/api at most'),
    layer('config-is-config', 'config', ['common'], 'config loading: no services'),
    layer(
      'policy-tools-are-below-the-cli',
      'policy',
      ['evidence', 'crypto', 'common'],
      'policy creation reads files, initrds and repositories and builds on the pure policy code; no services',
    ),
    {
      name: 'services-do-not-import-each-other',
      severity: 'error',
      comment: 'services meet through src/api clients and schemas, never through each other',
      from: { path: '^src/(agent|registrar|verifier|tenant)/' },
      to: { path: '^src/(agent|registrar|verifier|tenant|devtools|demo|cli)/', pathNot: '^src/$1/' },
    },
    layer(
      'devtools-are-below-the-cli',
      'devtools',
      ['agent', 'registrar', 'verifier', 'tenant', 'tpm', 'crypto', 'evidence', 'payload', 'api', 'db', 'config', 'common'],
      'development tools use the services, never the demo or the CLI',
    ),
    { name: 'no-circular', severity: 'error', from: { path: '^src/' }, to: { circular: true } },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
  },
}
