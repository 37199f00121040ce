/** One-way imports: the TPM library and the evidence core never reach into services, the CLI or the DB. */
const SERVICES = '^src/(agent|registrar|verifier|tenant|cli|db|api|config)/'
module.exports = {
  forbidden: [
    {
      name: 'tpm-is-a-library',
      severity: 'error',
      comment: 'src/tpm imports only itself and node built-ins',
      from: { path: '^src/tpm/' },
      to: { path: '^src/', pathNot: '^src/tpm/' },
    },
    {
      name: 'evidence-is-pure',
      severity: 'error',
      comment: 'src/evidence may use the TPM codecs, crypto and common helpers, nothing with I/O',
      from: { path: '^src/evidence/' },
      to: { path: SERVICES },
    },
    {
      name: 'evidence-no-io-builtins',
      severity: 'error',
      comment: 'verification functions take bytes and return verdicts: no fs, net or child processes',
      from: { path: '^src/evidence/' },
      to: { dependencyTypes: ['core'], path: '^(fs|node:fs|net|node:net|http|node:http|https|node:https|child_process|node:child_process|fs/promises|node:fs/promises)$' },
    },
    {
      name: 'crypto-is-a-library',
      severity: 'error',
      from: { path: '^src/crypto/' },
      to: { path: SERVICES },
    },
    {
      name: 'services-do-not-import-each-other',
      severity: 'error',
      comment: 'services meet through src/api clients and schemas, never through each other',
      from: { path: '^src/(agent|registrar|verifier|tenant)/' },
      to: { path: '^src/(agent|registrar|verifier|tenant)/', pathNot: '^src/$1/' },
    },
    { name: 'no-circular', severity: 'error', from: { path: '^src/' }, to: { circular: true } },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
  },
}
