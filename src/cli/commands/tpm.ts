import { X509Certificate } from '@peculiar/x509'
import { type Command, Option } from 'commander'
import { encodePcrBlob, formatQuoteString } from '../../evidence/quote/index.ts'
import { keylime, Tpm } from '../../tpm/index.ts'

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

/** `sha256:0,1,2,10` or `sha256:0-7,10` -> bank and sorted PCR list. */
export function parsePcrSpec(spec: string): { hashAlg: HashAlg; pcrs: number[] } {
  const m = /^(sha1|sha256|sha384|sha512):([0-9,-]+)$/.exec(spec.trim())
  if (!m) throw new Error(`bad --pcrs "${spec}": expected e.g. sha256:0,1,2,10 or sha256:0-7`)
  const pcrs = new Set<number>()
  for (const part of (m[2] as string).split(',').filter(Boolean)) {
    const [from, to] = part.split('-').map(Number) as [number, number | undefined]
    for (let p = from; p <= (to ?? from); p++) {
      if (!Number.isInteger(p) || p > 23) throw new Error(`PCR index out of range in "${spec}"`)
      pcrs.add(p)
    }
  }
  if (pcrs.size === 0) throw new Error(`no PCRs in "${spec}"`)
  return { hashAlg: m[1] as HashAlg, pcrs: [...pcrs].sort((a, b) => a - b) }
}

async function withTpm<T>(spec: string, fn: (tpm: Tpm) => Promise<T>): Promise<T> {
  const tpm = await Tpm.open(spec)
  try {
    return await fn(tpm)
  } finally {
    await tpm.close()
  }
}

function describeStoredCert(c: { index: number; template: string; der: Uint8Array }) {
  return {
    nvIndex: `0x${c.index.toString(16).padStart(8, '0')}`,
    template: c.template,
    certificate: certSummary(c.der) ?? 'empty',
  }
}

function certSummary(
  der: Uint8Array | null,
): { subject: string; issuer: string; serialNumber: string } | null | string {
  if (!der) return null
  try {
    const cert = new X509Certificate(der)
    return { subject: cert.subject, issuer: cert.issuer, serialNumber: cert.serialNumber }
  } catch (err) {
    return `unparseable certificate (${der.length} bytes): ${(err as Error).message}`
  }
}

function fail(err: unknown): void {
  process.stderr.write(`keylime tpm: ${(err as Error).message ?? String(err)}\n`)
  process.exitCode = 1
}

export function registerTpmCommands(program: Command): void {
  const tpm = program.command('tpm').description('Talk to a TPM 2.0 (hardware or swtpm)')

  tpm
    .command('info')
    .description('Manufacturer, firmware, PCR banks, algorithms and EK certificates of a TPM')
    .addOption(tpmOption())
    .option('--json', 'print JSON', false)
    .action(async (o: { tpm: string; json: boolean }) => {
      try {
        const out = await withTpm(o.tpm, async (t) => ({
          transport: t.description,
          ...(await keylime.getTpmInfo(t)),
          ekCertificates: {
            rsa: (await keylime.listEkCertificates(t, 'rsa')).map(describeStoredCert),
            ecc: (await keylime.listEkCertificates(t, 'ecc')).map(describeStoredCert),
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
      } catch (err) {
        fail(err)
      }
    })

  tpm
    .command('quote')
    .description(
      'Create the default EK and an AK under it, then quote PCRs with a nonce (Keylime quote format)',
    )
    .addOption(tpmOption())
    .requiredOption('--pcrs <bank:list>', 'PCRs to quote, e.g. sha256:0,1,2,10')
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
        try {
          const { hashAlg, pcrs } = parsePcrSpec(o.pcrs)
          const nonce = new TextEncoder().encode(o.nonce)
          if (nonce.length > 64) throw new Error('--nonce must be at most 64 bytes')
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
        } catch (err) {
          fail(err)
        }
      },
    )

  tpm
    .command('pcrread')
    .description('Read PCR values')
    .addOption(tpmOption())
    .requiredOption('--pcrs <bank:list>', 'PCRs to read, e.g. sha256:0-23')
    .option('--json', 'print JSON', false)
    .action(async (o: { tpm: string; pcrs: string; json: boolean }) => {
      try {
        const { hashAlg, pcrs } = parsePcrSpec(o.pcrs)
        const values = await withTpm(o.tpm, (t) => keylime.pcrRead(t, hashAlg, pcrs))
        const obj = Object.fromEntries([...values].map(([i, v]) => [String(i), hex(v)]))
        process.stdout.write(
          o.json
            ? `${JSON.stringify({ [hashAlg]: obj }, null, 2)}\n`
            : `${Object.entries(obj)
                .map(([i, v]) => `${hashAlg}:${i.padStart(2)} ${v}`)
                .join('\n')}\n`,
        )
      } catch (err) {
        fail(err)
      }
    })
}
