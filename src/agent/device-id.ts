/**
 * IAK and IDevID on the agent (keylime-protocols.md §B step 4; TCG "TPM 2.0 Keys for Device Identity and
 * Attestation"): the keys are re-created from their template (or read from persistent handles), each must be the
 * key its certificate names, and the IAK certifies the AK (TPM2_Certify) so the registrar can tie the AK to the
 * manufacturer's identity. Every mismatch stops start-up: registering with a wrong identity would only be refused.
 */
import { createHash, type KeyObject, X509Certificate } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { compareVersions } from '../api/versions.ts'
import type { Logger } from '../common/log.ts'
import { publicAreaToKeyObject } from '../crypto/tpm-public.ts'
import type { AgentTpm, DeviceIdTemplateName, TpmLock } from './agent-tpm.ts'
import { configuredDeviceIdTemplate, DeviceIdError, type DeviceIdOptions } from './option-checks.ts'

export { configuredDeviceIdTemplate, DeviceIdError, type DeviceIdOptions }

/** The template whose key type a certificate's key has (`detect`). */
export function templateOfKey(key: KeyObject): DeviceIdTemplateName {
  const d = key.asymmetricKeyDetails
  if (key.asymmetricKeyType === 'rsa' && d?.modulusLength === 2048) return 'H-1'
  if (key.asymmetricKeyType === 'ec') {
    const byCurve: Record<string, DeviceIdTemplateName> = {
      prime256v1: 'H-2',
      secp384r1: 'H-3',
      secp521r1: 'H-4',
    }
    const t = byCurve[d?.namedCurve ?? '']
    if (t) return t
  }
  throw new DeviceIdError(
    `cannot detect the IAK/IDevID template from a ${key.asymmetricKeyType} ${d?.modulusLength ?? d?.namedCurve ?? ''} certificate key; set iak_idevid_template`,
  )
}

function parseHandle(v: string, option: string): number | null {
  const s = v.trim()
  if (s === '') return null
  const n = Number.parseInt(s.replace(/^0x/i, ''), 16)
  if (!/^(0x)?[0-9a-f]+$/i.test(s) || n < 0x81000000 || n > 0x81ffffff) {
    throw new DeviceIdError(`${option} '${v}' is not a persistent handle (0x81xxxxxx)`)
  }
  return n
}

function toPem(der: Uint8Array): string {
  const b64 = Buffer.from(der).toString('base64')
  return `-----BEGIN CERTIFICATE-----\n${b64.replace(/.{1,64}/g, '$&\n')}-----END CERTIFICATE-----\n`
}

/** A certificate from a file (PEM or DER) or `nv:0x…` (an NV index of this TPM). */
async function readCertificate(
  source: string,
  option: string,
  tpm: AgentTpm,
  lock: TpmLock,
): Promise<X509Certificate> {
  try {
    const nv = /^nv:(0x)?([0-9a-f]{1,8})$/i.exec(source.trim())
    if (nv) {
      const index = Number.parseInt(nv[2] as string, 16)
      return new X509Certificate(await lock.run(() => tpm.readNvCertificate(index)))
    }
    return new X509Certificate(readFileSync(source))
  } catch (err) {
    throw new DeviceIdError(
      `${option} ${source} cannot be read as a certificate: ${(err as Error).message}`,
      {
        cause: err,
      },
    )
  }
}

function sameKey(a: KeyObject, b: KeyObject): boolean {
  return a.export({ type: 'spki', format: 'der' }).equals(b.export({ type: 'spki', format: 'der' }))
}

export interface AgentDeviceIdentity {
  template: DeviceIdTemplateName
  /** Registration fields without the certification (`iak_tpm`, `idevid_tpm`, `iak_cert`, `idevid_cert`). */
  fields: { iak_tpm: string; idevid_tpm: string; iak_cert: string; idevid_cert: string }
  /** TPM2_Certify of the AK by the IAK for the registrar API `version` (2.6+: SHA-256(uuid), else the uuid). */
  certifyAk(
    akHandle: number,
    uuid: string,
    version: string,
  ): Promise<{ iak_attest: string; iak_sign: string }>
  /** Flushes keys created from a template (persistent ones stay). */
  release(): Promise<void>
}

/** Loads certificates, creates or reads both keys, and checks each key against its certificate. */
export async function prepareDeviceIdentity(
  cfg: DeviceIdOptions,
  tpm: AgentTpm,
  lock: TpmLock,
  log: Logger,
): Promise<AgentDeviceIdentity> {
  const iakHandle = parseHandle(cfg.iak_handle, 'iak_handle')
  const idevidHandle = parseHandle(cfg.idevid_handle, 'idevid_handle')
  const iakCert = await readCertificate(cfg.iak_cert, 'iak_cert', tpm, lock)
  const idevidCert = await readCertificate(cfg.idevid_cert, 'idevid_cert', tpm, lock)
  const template = configuredDeviceIdTemplate(cfg) ?? templateOfKey(iakCert.publicKey)
  const created: number[] = []
  const load = async (kind: 'iak' | 'idevid', handle: number | null) => {
    const key = await lock.run(() => tpm.deviceIdKey(kind, handle === null ? { template } : { handle }))
    if (handle === null) created.push(key.handle)
    return key
  }
  const release = async () => {
    for (const h of created.splice(0)) await lock.run(() => tpm.flush(h)).catch(() => undefined)
  }
  try {
    // Only the IDevID's public area is needed: flushed at once (swtpm has three object slots: EK, AK and IAK).
    const idevid = await load('idevid', idevidHandle)
    await release()
    const iak = await load('iak', iakHandle)
    for (const [name, key, cert] of [
      ['IAK', iak, iakCert],
      ['IDevID', idevid, idevidCert],
    ] as const) {
      if (!sameKey(publicAreaToKeyObject(key.publicArea), cert.publicKey)) {
        throw new DeviceIdError(
          `the ${name} this TPM ${handleOrTemplate(name === 'IAK' ? iakHandle : idevidHandle, template)} is not the key of its certificate (${cert.subject.replace(/\n/g, ', ')}); check iak_idevid_template and the certificate files`,
        )
      }
    }
    log.info(`IAK and IDevID (template ${template}) match their certificates`)
    return {
      template,
      fields: {
        iak_tpm: Buffer.from(iak.publicArea).toString('base64'),
        idevid_tpm: Buffer.from(idevid.publicArea).toString('base64'),
        iak_cert: toPem(iakCert.raw),
        idevid_cert: toPem(idevidCert.raw),
      },
      async certifyAk(akHandle, uuid, version) {
        const qualifyingData =
          compareVersions(version, '2.6') >= 0
            ? createHash('sha256').update(uuid, 'utf8').digest()
            : Buffer.from(uuid, 'utf8')
        const { attest, signature } = await lock.run(() =>
          tpm.certify({
            objectHandle: akHandle,
            signHandle: iak.handle,
            qualifyingData,
            ...(cfg.iak_password ? { signPassword: cfg.iak_password } : {}),
          }),
        )
        return {
          iak_attest: Buffer.from(attest).toString('base64'),
          iak_sign: Buffer.from(signature).toString('base64'),
        }
      },
      release,
    }
  } catch (err) {
    await release()
    throw err
  }
}

function handleOrTemplate(handle: number | null, template: DeviceIdTemplateName): string {
  return handle === null ? `creates from template ${template}` : `holds at 0x${handle.toString(16)}`
}
