import { type Command, Option } from 'commander'
import { normalizeTenantArgv } from '../../tenant/argv.ts'
import { TENANT_COMMANDS, type TenantCliOptions } from '../../tenant/cli-options.ts'
import { port } from '../args.ts'
import { EXIT_STATUS_HELP } from '../errors.ts'

export { normalizeTenantArgv }

/** A repeatable option: each occurrence appends its value. */
const collect = (value: string, previous: string[] | undefined): string[] => [...(previous ?? []), value]

export function registerTenantCommands(program: Command): void {
  const tenant = program
    .command('tenant')
    .description('Operator CLI: enroll agents with the verifier, query and manage them and their policies')
    .argument('[command]', `one of: ${TENANT_COMMANDS.join(', ')} (upstream style: -c <command>)`)
    .option('-c, --command <command>', 'tenant command (default: add)')
    .option('-u, --uuid <uuid>', 'agent UUID')
    .option('-t, --targethost <ip>', 'agent IP (default: from the registrar)')
    .option('--targetport <port>', 'agent port (default: from the registrar); upstream -tp', port)
    .option(
      '--cv-targethost <ip>',
      'agent IP as the verifier reaches it, if different (upstream --cv_targethost)',
    )
    .option('-v, --cv <ip>', 'verifier IP')
    .option('--cvport <port>', 'verifier port; upstream -vp', port)
    .option('--cvid <id>', 'verifier id filter for cvlist/bulkinfo; upstream -vi')
    .option('-r, --registrarhost <ip>', 'registrar IP')
    .option('--registrarport <port>', 'registrar TLS port; upstream -rp', port)
    .option('--no-verifier-check', 'delete/reactivate without looking the agent up first; upstream -nvc')
    .option('--push-model', 'enroll a push-mode agent (no agent contact, no payload)')
    .option('-f, --file <path>', 'payload file to encrypt and deliver')
    .option('-k, --key <path>', 'key file (b64 K, U, V lines) for a pre-encrypted payload')
    .option('-p, --payload <path>', 'pre-encrypted payload (with -k)')
    .option(
      '--cert <dir>',
      'deliver a CA certificate package for the agent from this CA dir ("default": WORK_DIR/ca)',
    )
    .option('--include <dir>', 'extra files to add to the payload archive')
    .option('--runtime-policy <path>', 'runtime (IMA) policy JSON, plain or DSSE-signed')
    .option(
      '--runtime-policy-url <url>',
      'download the runtime policy (needs --runtime-policy-checksum; redirects are not followed)',
    )
    .option('--runtime-policy-checksum <sha256>', 'expected SHA-256 of the runtime policy file or download')
    .option('--runtime-policy-sig-key <pem>', 'public key that signed a DSSE runtime policy')
    .option('--runtime-policy-name <name>', 'name of a runtime policy stored at the verifier')
    .option(
      '--allowlist <file>',
      'deprecated: legacy allowlist (flat or JSON), converted to a runtime policy',
    )
    .option('--allowlist-url <url>', 'deprecated: download the legacy allowlist')
    .option('--allowlist-name <name>', 'deprecated: same as --runtime-policy-name')
    .option('--exclude <file>', 'deprecated: exclude list (one regex per line) for --allowlist')
    .option(
      '--signature-verification-key <file>',
      'deprecated: IMA file signature verification key (repeatable; upstream --sign_verification_key)',
      collect,
    )
    .option(
      '--signature-verification-key-sig <file>',
      'deprecated: GPG signature of the key of the same position',
      collect,
    )
    .option(
      '--signature-verification-key-sig-key <file>',
      'deprecated: GPG public key that checks the --signature-verification-key-sig of the same position',
      collect,
    )
    .option('--signature-verification-key-url <url>', 'deprecated: download an IMA verification key', collect)
    .option(
      '--signature-verification-key-sig-url <url>',
      'deprecated: download the GPG signature of that key',
      collect,
    )
    .option(
      '--signature-verification-key-sig-url-key <file>',
      'deprecated: GPG public key that checks the --signature-verification-key-sig-url of the same position',
      collect,
    )
    .option(
      '--mb-policy <path>',
      'measured-boot reference state JSON, or "default" for tenant.conf mb_refstate (upstream --mb_refstate)',
    )
    .option('--mb-policy-name <name>', 'name of a measured-boot policy stored at the verifier')
    .option('--tpm-policy <json>', 'static PCR policy, e.g. \'{"15":["0000..."]}\' (upstream --tpm_policy)')
    .option('--verify', 'also stop attestation when the agent does not confirm the payload')
    .option('--agent-api-version <version>', 'skip agent version detection (upstream --supported-version)')
    .option(
      '--config <file>',
      'tenant config file (default: /etc/keylime/tenant.conf; env KEYLIME_TENANT_CONFIG)',
    )
    .option('--tls-dir <dir>', 'directory with cacert.crt, client-cert.crt and client-private.pem')
    .addOption(new Option('--json', 'print machine-readable JSON'))
    .addHelpText('after', `\n${EXIT_STATUS_HELP}`)
    .action(async (positional: string | undefined, opts: TenantCliOptions) => {
      const command = opts.command ?? positional ?? 'add'
      const { runTenantCommand } = await import('../../tenant/cli-actions.ts')
      try {
        await runTenantCommand(command, opts)
      } catch (err) {
        // --json callers read the failure from stdout too; the one-line report still goes to stderr.
        if (opts.json) process.stdout.write(`${JSON.stringify({ error: (err as Error).message })}\n`)
        throw err
      }
    })
  tenant.configureHelp({ sortOptions: false })
}
