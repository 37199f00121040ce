import { type Command, Option } from 'commander'
import type { Tpm } from '../../tpm/index.ts'
import { CliError, EXIT, EXIT_STATUS_HELP } from '../errors.ts'

const HASH_ALGS = ['sha1', 'sha256', 'sha384', 'sha512'] as const
type HashAlg = (typeof HASH_ALGS)[number]

const tpmOption = () =>
  new Option(
    '--tpm <transport>',
    'TPM transport: device:/dev/tpmrm0, /dev/tpm0, swtpm:host=H,port=P, swtpm:path=/x.sock',
  )
    .env('KEYLIME_TPM')
    .default('device:/dev/tpmrm0')

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')
const b64 = (b: Uint8Array) => Buffer.from(b).toString('base64')

/** PCRs read by default: every PCR of the SHA-256 bank. */
const DEFAULT_PCRREAD = 'sha256:0-23'
/** PCRs quoted by default: what Keylime attests by default, firmware and boot (0-9) and IMA (10). */
const DEFAULT_QUOTE_PCRS = 'sha256:0-10'

/** `sha256:0,1,2,10` or `sha256:0-7,10` -> bank and sorted PCR list. */
export function parsePcrSpec(spec: string): { hashAlg: HashAlg; pcrs: number[] } {
  const m = /^(sha1|sha256|sha384|sha512):([0-9,-]+)$/.exec(spec.trim())
  if (!m) {
    throw new CliError(
      `bad --pcrs "${spec}"`,
      EXIT.usage,
      'write a bank and PCRs, e.g. sha256:0,1,2,10 or sha256:0-7',
    )
  }
  const pcrs = new Set<number>()
  for (const part of (m[2] as string).split(',').filter(Boolean)) {
    const [from, to] = part.split('-').map(Number) as [number, number | undefined]
    for (let p = from; p <= (to ?? from); p++) {
      if (!Number.isInteger(p) || p > 23) {
        throw new CliError(`PCR index out of range in "${spec}"`, EXIT.usage, 'PCRs are numbered 0 to 23')
      }
      pcrs.add(p)
    }
  }
  if (pcrs.size === 0) throw new CliError(`no PCRs in "${spec}"`, EXIT.usage, 'e.g. sha256:0-7')
  return { hashAlg: m[1] as HashAlg, pcrs: [...pcrs].sort((a, b) => a - b) }
}

/** Opens the TPM at `spec`; a missing or forbidden device is reported with what to do about it. */
async function withTpm<T>(spec: string, fn: (tpm: Tpm) => Promise<T>): Promise<T> {
  const { Tpm } = await import('../../tpm/index.ts')
  let tpm: Tpm
  try {
    tpm = await Tpm.open(spec)
  } catch (err) {
    // Opening only parses the transport: what fails here is the --tpm value itself.
    throw new CliError((err as Error).message, EXIT.usage)
  }
  try {
    // A device opens on the first command: a missing device shows up here.
    return await fn(tpm)
  } catch (err) {
    throw tpmOpenError(spec, err)
  } finally {
    await tpm.close()
  }
}

/** A missing or forbidden TPM device, reported with what to do about it; other errors unchanged. */
function tpmOpenError(spec: string, err: unknown): unknown {
  const code = ((err as { cause?: unknown }).cause as NodeJS.ErrnoException | undefined)?.code
  if (code === 'ENOENT') {
    return new CliError(
      `opening the TPM ${spec}: no such device`,
      EXIT.usage,
      'this machine has no TPM there: check the TPM driver (tpm_tis, tpm_crb), or give --tpm swtpm:host=127.0.0.1,port=2321 (or KEYLIME_TPM)',
    )
  }
  if (code === 'EACCES' || code === 'EPERM') {
    return new CliError(
      `opening the TPM ${spec}: permission denied`,
      EXIT.usage,
      'run as root or as a member of the tss group (usermod -aG tss USER)',
    )
  }
  return err
}

function describeStoredCert(
  c: { index: number; template: string; der: Uint8Array },
  X509Certificate: typeof import('@peculiar/x509').X509Certificate,
) {
  return {
    nvIndex: `0x${c.index.toString(16).padStart(8, '0')}`,
    template: c.template,
    certificate: certSummary(c.der, X509Certificate) ?? 'empty',
  }
}

function certSummary(
  der: Uint8Array | null,
  X509Certificate: typeof import('@peculiar/x509').X509Certificate,
): { subject: string; issuer: string; serialNumber: string } | null | string {
  if (!der) return null
  try {
    const cert = new X509Certificate(der)
    return { subject: cert.subject, issuer: cert.issuer, serialNumber: cert.serialNumber }
  } catch (err) {
    return `unparseable certificate (${der.length} bytes): ${(err as Error).message}`
  }
}

export function registerTpmCommands(program: Command): void {
  const tpm = program
    .command('tpm')
    .description('Talk to a TPM 2.0 (hardware or swtpm)')
    .addHelpText('after', `\n${EXIT_STATUS_HELP}`)

  tpm
    .command('info')
    .description('Manufacturer, firmware, PCR banks, algorithms and EK certificates of a TPM')
    .addOption(tpmOption())
    .option('--json', 'print JSON', false)
    .action(async (o: { tpm: string; json: boolean }) => {
      const { keylime } = await import('../../tpm/index.ts')
      const x509 = await import('@peculiar/x509')
      // a CommonJS build, when bundled, is its chunk's default export
      const { X509Certificate } = (x509 as unknown as { default?: typeof x509 }).default ?? x509
      const stored = (c: { index: number; template: string; der: Uint8Array }) =>
        describeStoredCert(c, X509Certificate)
      {
        const out = await withTpm(o.tpm, async (t) => ({
          transport: t.description,
          ...(await keylime.getTpmInfo(t)),
          ekCertificates: {
            rsa: (await keylime.listEkCertificates(t, 'rsa')).map(stored),
            ecc: (await keylime.listEkCertificates(t, 'ecc')).map(stored),
          },
        }))
        if (o.json) {
          process.stdout.write(`${JSON.stringify(out, null, 2)}\n`)
          return
        }
        const lines = [
          `Transport:     ${out.transport}`,
          `Manufacturer:  ${out.manufacturer}${out.vendorString ? ` (${out.vendorString})` : ''}`,
          `Firmware:      ${out.firmwareVersion}`,
          `Spec:          level ${out.specLevel}, revision ${(out.specRevision / 100).toFixed(2)}`,
          `PCR banks:     ${out.pcrBanks.map((b) => `${b.hashAlg} (${b.pcrs.length} PCRs)`).join(', ') || 'none'}`,
          `Algorithms:    ${out.algorithms.join(', ')}`,
        ]
        for (const alg of ['rsa', 'ecc'] as const) {
          const certs = out.ekCertificates[alg]
          if (certs.length === 0) lines.push(`EK cert (${alg}): none`)
          for (const c of certs) {
            const text =
              typeof c.certificate === 'string'
                ? c.certificate
                : `subject "${c.certificate.subject}", issuer "${c.certificate.issuer}"`
            lines.push(`EK cert (${alg}) at ${c.nvIndex} (${c.template}): ${text}`)
          }
        }
        process.stdout.write(`${lines.join('\n')}\n`)
      }
    })

  tpm
    .command('quote')
    .description(
      'Create the default EK and an AK under it, then quote PCRs with a nonce (Keylime quote format)',
    )
    .addOption(tpmOption())
    .option('--pcrs <bank:list>', `PCRs to quote, e.g. sha256:0,1,2,10`, DEFAULT_QUOTE_PCRS)
    .requiredOption('--nonce <nonce>', 'qualifying data (its ASCII bytes, as Keylime sends nonces)')
    .addOption(new Option('--ek-alg <alg>', 'EK algorithm').choices(['rsa', 'ecc']).default('rsa'))
    .addOption(new Option('--sign-alg <alg>', 'AK signing scheme').choices(['rsassa', 'ecdsa']))
    .option('--json', 'print JSON', false)
    .action(
      async (o: {
        tpm: string
        pcrs: string
        nonce: string
        ekAlg: 'rsa' | 'ecc'
        signAlg?: 'rsassa' | 'ecdsa'
        json: boolean
      }) => {
        {
          const { hashAlg, pcrs } = parsePcrSpec(o.pcrs)
          const nonce = new TextEncoder().encode(o.nonce)
          if (nonce.length > 64) throw new CliError('--nonce is longer than 64 bytes', EXIT.usage)
          const { keylime } = await import('../../tpm/index.ts')
          const { encodePcrBlob, formatQuoteString } = await import('../../evidence/quote/index.ts')
          const signAlg = o.signAlg ?? (o.ekAlg === 'rsa' ? 'rsassa' : 'ecdsa')
          const out = await withTpm(o.tpm, async (t) => {
            const ek = await keylime.createEk(t, o.ekAlg)
            try {
              const ak = await keylime.createAk(t, ek.handle, { hashAlg, signAlg })
              try {
                const q = await keylime.quote(t, ak.handle, { nonce, hashAlg, pcrs, signAlg })
                const pcrBlob = encodePcrBlob({ banks: [{ hashAlg, values: q.pcrValues }] })
                return {
                  quote: formatQuoteString({ attest: q.attest, signature: q.signature, pcrBlob }),
                  hashAlg,
                  signAlg,
                  encAlg: o.ekAlg,
                  akTpm: b64(ak.publicArea),
                  ekTpm: b64(ek.publicArea),
                  pcrs: Object.fromEntries([...q.pcrValues].map(([i, v]) => [String(i), hex(v)])),
                }
              } finally {
                await keylime.flushContext(t, ak.handle)
              }
            } finally {
              await keylime.flushContext(t, ek.handle)
            }
          })
          if (o.json) {
            process.stdout.write(`${JSON.stringify(out, null, 2)}\n`)
            return
          }
          const lines = [
            `quote:  ${out.quote}`,
            `ak_tpm: ${out.akTpm}`,
            `hash_alg: ${hashAlg}  sign_alg: ${signAlg}`,
          ]
          for (const [i, v] of Object.entries(out.pcrs)) lines.push(`${hashAlg}:${i.padStart(2)} ${v}`)
          process.stdout.write(`${lines.join('\n')}\n`)
        }
      },
    )

  tpm
    .command('pcrread')
    .description('Read PCR values')
    .addOption(tpmOption())
    .option('--pcrs <bank:list>', 'PCRs to read, e.g. sha256:0,1,2,10', DEFAULT_PCRREAD)
    .option('--json', 'print JSON', false)
    .action(async (o: { tpm: string; pcrs: string; json: boolean }) => {
      {
        const { hashAlg, pcrs } = parsePcrSpec(o.pcrs)
        const { keylime } = await import('../../tpm/index.ts')
        const values = await withTpm(o.tpm, (t) => keylime.pcrRead(t, hashAlg, pcrs))
        const obj = Object.fromEntries([...values].map(([i, v]) => [String(i), hex(v)]))
        process.stdout.write(
          o.json
            ? `${JSON.stringify({ [hashAlg]: obj }, null, 2)}\n`
            : `${Object.entries(obj)
                .map(([i, v]) => `${hashAlg}:${i.padStart(2)} ${v}`)
                .join('\n')}\n`,
        )
      }
    })
}
