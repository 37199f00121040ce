import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { type Command, Option } from 'commander'

const tpmOption = () =>
  new Option(
    '--tpm <transport>',
    'TPM transport: swtpm:host=H,port=P, swtpm:path=/x.sock (development TPMs only)',
  )
    .env('KEYLIME_TPM')
    .makeOptionMandatory()

function parseNvIndex(v: string): number {
  const n = Number.parseInt(v.replace(/^0x/i, ''), 16)
  if (!/^(0x)?[0-9a-f]{1,8}$/i.test(v) || n < 0x01000000 || n > 0x01ffffff) {
    throw new Error(`'${v}' is not an NV index (0x01xxxxxx)`)
  }
  return n
}

/** `keylime devtools …`: provisioning helpers for development TPMs (swtpm), never for production machines. */
export function registerDevtoolsCommands(program: Command): void {
  const devtools = program
    .command('devtools')
    .description(
      'Development helpers: provision a swtpm with device identity or an EK CA chain from test CAs',
    )

  devtools
    .command('provision-identity')
    .description(
      'Create the IAK and IDevID from a TCG template and certify both with a test CA (created in --ca-dir if absent); ' +
        'writes iak-cert.crt and idevid-cert.crt, optionally also into NV indices',
    )
    .addOption(tpmOption())
    .requiredOption(
      '--ca-dir <dir>',
      'test CA directory (ca-cert.pem, ca-private.pem); add ca-cert.pem to tpm_cert_store',
    )
    .addOption(
      new Option('--template <name>', 'TCG template').choices(['H-1', 'H-2', 'H-3', 'H-4']).default('H-1'),
    )
    .option('--out-dir <dir>', 'where to write iak-cert.crt and idevid-cert.crt (the agent keylime_dir)')
    .option('--nv-iak <index>', 'also store the IAK certificate (DER) at this NV index', parseNvIndex)
    .option('--nv-idevid <index>', 'also store the IDevID certificate (DER) at this NV index', parseNvIndex)
    .action(
      async (o: {
        tpm: string
        caDir: string
        template: 'H-1' | 'H-2' | 'H-3' | 'H-4'
        outDir?: string
        nvIak?: number
        nvIdevid?: number
      }) => {
        if ((o.nvIak === undefined) !== (o.nvIdevid === undefined)) {
          throw new Error('--nv-iak and --nv-idevid go together')
        }
        if (!o.outDir && o.nvIak === undefined) throw new Error('give --out-dir and/or --nv-iak/--nv-idevid')
        const { createTestCa, loadTestCa, provisionDeviceIdentity, saveTestCa } = await import(
          '../../devtools/device-identity.ts'
        )
        let ca: Awaited<ReturnType<typeof loadTestCa>>
        if (existsSync(join(o.caDir, 'ca-cert.pem'))) ca = await loadTestCa(o.caDir)
        else {
          ca = await createTestCa('Keylime TS test device identity CA')
          saveTestCa(ca, o.caDir)
        }
        const id = await provisionDeviceIdentity({
          tpm: o.tpm,
          ca,
          template: o.template,
          ...(o.outDir ? { outDir: o.outDir } : {}),
          ...(o.nvIak !== undefined && o.nvIdevid !== undefined
            ? { nv: { iak: o.nvIak, idevid: o.nvIdevid } }
            : {}),
        })
        process.stdout.write(
          `${JSON.stringify(
            {
              template: id.template,
              ca: join(o.caDir, 'ca-cert.pem'),
              files: id.files ?? null,
              nv:
                o.nvIak !== undefined
                  ? { iak: `0x${o.nvIak.toString(16)}`, idevid: `0x${o.nvIdevid?.toString(16)}` }
                  : null,
            },
            null,
            2,
          )}\n`,
        )
      },
    )

  devtools
    .command('provision-ek-chain')
    .description(
      "Re-issue the default EK's certificate under a new intermediate CA and store the intermediate in the EK CA " +
        'chain NV range; writes the root CA certificate for tpm_cert_store',
    )
    .addOption(tpmOption())
    .addOption(new Option('--alg <alg>', 'EK algorithm').choices(['rsa', 'ecc']).default('rsa'))
    .option(
      '--ek-handle <handle>',
      "a persistent EK instead of the default one (e.g. swtpm's 0x81010016 P-384 EK)",
    )
    .requiredOption('--root-out <file>', 'where to write the root CA certificate (PEM)')
    .action(async (o: { tpm: string; alg: 'rsa' | 'ecc'; rootOut: string; ekHandle?: string }) => {
      const { writeFileSync } = await import('node:fs')
      const { provisionEkCaChain } = await import('../../devtools/device-identity.ts')
      const ekHandle =
        o.ekHandle === undefined ? undefined : Number.parseInt(o.ekHandle.replace(/^0x/i, ''), 16)
      if (ekHandle !== undefined && !(ekHandle >= 0x81000000 && ekHandle <= 0x81ffffff)) {
        throw new Error(`--ek-handle '${o.ekHandle}' is not a persistent handle (0x81xxxxxx)`)
      }
      const chain = await provisionEkCaChain({
        tpm: o.tpm,
        alg: o.alg,
        ...(ekHandle !== undefined ? { ekHandle } : {}),
      })
      writeFileSync(o.rootOut, chain.root.certPem)
      process.stdout.write(`${JSON.stringify({ root: o.rootOut, ekAlg: o.alg }, null, 2)}\n`)
    })
}
