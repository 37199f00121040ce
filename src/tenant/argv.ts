/**
 * Upstream `keylime_tenant` uses multi-letter short flags (`-tp`, `-vp`, `-vi`, `-rp`, `-nvc`) that commander
 * cannot declare; they are rewritten to their long forms before parsing so upstream command lines work unchanged.
 */
const MULTI_LETTER_FLAGS: Record<string, string> = {
  '-tp': '--targetport',
  '-vp': '--cvport',
  '-vi': '--cvid',
  '-rp': '--registrarport',
  '-nvc': '--no-verifier-check',
}

/** Upstream spellings that differ only by `_`/`-` or were renamed. */
const ALIASES: Record<string, string> = {
  '--mb_refstate': '--mb-policy',
  '--supported-version': '--agent-api-version',
  '--cv_targethost': '--cv-targethost',
  '--tpm_policy': '--tpm-policy',
  '--sign_verification_key': '--signature-verification-key',
}

export function normalizeTenantArgv(args: readonly string[]): string[] {
  return args.map((arg) => {
    const [flag, ...rest] = arg.split('=')
    const mapped = MULTI_LETTER_FLAGS[flag as string] ?? ALIASES[flag as string]
    if (!mapped) return arg
    return rest.length > 0 ? `${mapped}=${rest.join('=')}` : mapped
  })
}
