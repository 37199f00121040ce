import { writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { type Command, Option } from 'commander'
import { loadCaConfig } from '../../config/ca.ts'
import { keylimeDir } from '../../config/loader.ts'
import type { CaSettings } from '../../crypto/ca.ts'
import { positiveInt } from '../args.ts'
import { CliError, EXIT, EXIT_STATUS_HELP } from '../errors.ts'

interface DirOpts {
  dir?: string
  json?: boolean
}

function caDir(o: DirOpts): string {
  return resolve(o.dir ?? join(keylimeDir(), 'ca'))
}

/** ca.conf `[ca]` -> CA settings (upstream's password-protected private.yml is not used: keys are 0600 PEM files). */
function settingsFromConfig(): Partial<CaSettings> {
  const { config } = loadCaConfig()
  return {
    commonName: config.cert_ca_name,
    country: config.cert_country,
    state: config.cert_state,
    locality: config.cert_locality,
    organization: config.cert_organization,
    orgUnit: config.cert_org_unit,
    caLifetimeDays: config.cert_ca_lifetime,
    certLifetimeDays: config.cert_lifetime,
    rsaBits: config.cert_bits,
    crlDistributionUrl: config.cert_crl_dist,
  }
}

function print(o: DirOpts, json: unknown, human: string): void {
  process.stdout.write(o.json ? `${JSON.stringify(json, null, 2)}\n` : `${human}\n`)
}

const keyTypeOption = (): Option => new Option('--key-type <type>', 'key type').choices(['rsa', 'ec'])
const dirOption = (): Option => new Option('-d, --dir <dir>', 'CA directory (default $KEYLIME_DIR/ca)')

export function registerCaCommands(program: Command): void {
  const ca = program
    .command('ca')
    .description(
      'Certificate authority for Keylime TLS and payload certificates (keylime_ca directory layout)',
    )
    .addHelpText('after', `\n${EXIT_STATUS_HELP}`)

  ca.command('init')
    .description('create a new CA (cacert.crt, ca-private.pem, empty CRL) from ca.conf settings')
    .addOption(dirOption())
    .addOption(keyTypeOption())
    .option('--json', 'machine-readable output')
    .action(async (o: DirOpts & { keyType?: 'rsa' | 'ec' }) => {
      const { createCa } = await import('../../crypto/ca.ts')
      const authority = await createCa(caDir(o), {
        ...settingsFromConfig(),
        ...(o.keyType ? { keyType: o.keyType } : {}),
      })
      print(
        o,
        {
          dir: authority.dir,
          subject: authority.cert.subject,
          notAfter: authority.cert.notAfter.toISOString(),
        },
        `created CA "${authority.cert.subject}" in ${authority.dir}`,
      )
    })

  ca.command('create')
    .description('issue a certificate and key: <name>-cert.crt, <name>-private.pem, <name>-public.pem')
    .requiredOption('-n, --name <cn>', 'common name (also the file name stem)')
    .option('--san <name...>', 'subjectAltNames (IP addresses and DNS names are told apart automatically)')
    .addOption(
      new Option('--usage <usage>', 'extended key usage')
        .choices(['server', 'client', 'both'])
        .default('both'),
    )
    .addOption(keyTypeOption())
    .option('--days <n>', 'lifetime in days (default cert_lifetime)', positiveInt)
    .addOption(dirOption())
    .option('--json', 'machine-readable output')
    .action(
      async (
        o: DirOpts & {
          name: string
          san?: string[]
          usage: 'server' | 'client' | 'both'
          keyType?: 'rsa' | 'ec'
          days?: number
        },
      ) => {
        const { issueCertificate, loadCa } = await import('../../crypto/ca.ts')
        const issued = await issueCertificate(await loadCa(caDir(o)), {
          commonName: o.name,
          sans: o.san ?? [],
          usage: o.usage,
          ...(o.keyType ? { keyType: o.keyType } : {}),
          ...(o.days !== undefined ? { lifetimeDays: o.days } : {}),
        })
        print(
          o,
          {
            name: issued.name,
            serial: issued.serial.toString(),
            subject: issued.cert.subject,
            files: issued.paths,
          },
          `issued ${issued.cert.subject} (serial ${issued.serial}): ${issued.paths.cert}`,
        )
      },
    )

  ca.command('list')
    .description('list issued certificates with serials and revocation state')
    .addOption(dirOption())
    .option('--json', 'machine-readable output')
    .action(async (o: DirOpts) => {
      const { listCertificates, loadCa } = await import('../../crypto/ca.ts')
      const list = listCertificates(await loadCa(caDir(o)))
      const lines = list.map(
        (c) =>
          `${c.serial.padStart(6)}  ${c.revoked ? 'REVOKED' : 'valid  '}  ${c.notAfter.slice(0, 10)}  ${c.name}`,
      )
      print(
        o,
        list,
        lines.length ? ['serial  state    expires     name', ...lines].join('\n') : 'no certificates issued',
      )
    })

  ca.command('revoke')
    .description('revoke a certificate by name or serial and rewrite cacrl.der / cacrl.pem')
    .requiredOption('-n, --name <name|serial>', 'certificate name or decimal serial')
    .addOption(dirOption())
    .option('--json', 'machine-readable output')
    .action(async (o: DirOpts & { name: string }) => {
      const { loadCa, revokeCertificate } = await import('../../crypto/ca.ts')
      const entry = await revokeCertificate(await loadCa(caDir(o)), o.name)
      print(o, entry, `revoked ${entry.name} (serial ${entry.serial}); CRL updated`)
    })

  ca.command('crl')
    .description('regenerate the CRL (cacrl.der, cacrl.pem) with a fresh update time')
    .addOption(dirOption())
    .option('--json', 'machine-readable output')
    .action(async (o: DirOpts) => {
      const { loadCa, listCertificates, writeCrl } = await import('../../crypto/ca.ts')
      const authority = await loadCa(caDir(o))
      await writeCrl(authority)
      const revoked = listCertificates(authority).filter((c) => c.revoked !== null).length
      const files = { der: join(authority.dir, 'cacrl.der'), pem: join(authority.dir, 'cacrl.pem') }
      print(o, { ...files, revoked }, `wrote ${files.der} and ${files.pem} (${revoked} revoked)`)
    })

  ca.command('pkg')
    .description('write <name>-pkg.zip: the certificate package the tenant sends with --cert')
    .requiredOption('-n, --name <uuid>', 'agent id (common name of its certificate)')
    .option('--include <dir>', 'also add the plain files of this directory')
    .option('-o, --out <file>', 'output zip (default <dir>/<name>-pkg.zip)')
    .addOption(dirOption())
    .option('--json', 'machine-readable output')
    .action(async (o: DirOpts & { name: string; include?: string; out?: string }) => {
      const { certPaths, listCertificates, loadCa } = await import('../../crypto/ca.ts')
      const { buildCertPackage } = await import('../../payload/cert-package.ts')
      const authority = await loadCa(caDir(o))
      // The package would hand the agent a certificate that the CRL in the same package revokes.
      const latest = listCertificates(authority)
        .filter((c) => c.name === o.name)
        .at(-1)
      if (latest?.revoked) {
        const { cert } = certPaths(authority.dir, o.name)
        throw new CliError(
          `the certificate of ${o.name} (serial ${latest.serial}) was revoked on ${latest.revoked.date.slice(0, 10)}`,
          EXIT.failed,
          `a revoked certificate is never packaged: move ${cert} and its key files away to have a new one issued`,
        )
      }
      const pkg = await buildCertPackage(authority, o.name, o.include ? { includeDir: o.include } : {})
      const out = resolve(o.out ?? join(authority.dir, `${o.name}-pkg.zip`))
      await writeFile(out, pkg.zip, { mode: 0o600 })
      print(
        o,
        { file: out, entries: pkg.entries, metadata: pkg.metadata },
        `wrote ${out} (${pkg.entries.length} files)`,
      )
    })
}
