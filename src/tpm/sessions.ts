import { createHash, randomBytes } from 'node:crypto'
import { FlushContext } from './commands/context.ts'
import { PolicyOr, PolicySecret, StartAuthSession } from './commands/session.ts'
import { digestSize, nodeHashName, TpmAlg, TpmCc, TpmRh, TpmSe } from './constants.ts'
import { TpmUsageError } from './errors.ts'
import { HmacSession, PasswordSession, PolicySession } from './session.ts'
import type { Tpm } from './tpm.ts'

const NULL_SYMMETRIC = { algorithm: TpmAlg.Null, keyBits: 0, mode: TpmAlg.Null }

async function start(tpm: Tpm, sessionType: number, hashAlg: number) {
  return tpm.run(StartAuthSession, {
    tpmKey: TpmRh.Null,
    bind: TpmRh.Null,
    nonceCaller: randomBytes(digestSize(hashAlg) ?? 32),
    encryptedSalt: new Uint8Array(0),
    sessionType,
    symmetric: NULL_SYMMETRIC,
    authHash: hashAlg,
  })
}

/** Starts an unsalted, unbound policy session. */
export async function startPolicySession(tpm: Tpm, hashAlg: number = TpmAlg.Sha256): Promise<PolicySession> {
  const { sessionHandle, nonceTpm } = await start(tpm, TpmSe.Policy, hashAlg)
  return new PolicySession(sessionHandle, hashAlg, nonceTpm)
}

/** Starts an unsalted, unbound HMAC session for an entity whose auth value is `password`. */
export async function startHmacSession(
  tpm: Tpm,
  password?: string | Uint8Array,
  hashAlg: number = TpmAlg.Sha256,
): Promise<HmacSession> {
  const { sessionHandle, nonceTpm } = await start(tpm, TpmSe.Hmac, hashAlg)
  return new HmacSession(sessionHandle, hashAlg, nonceTpm, password)
}

/**
 * PolicyC of the TCG EK Credential Profile 2.x (B.6, PolicyAuthorizeNV of index 0x01c07f01) per nameAlg: one branch
 * of the high-range EK templates' PolicyB = PolicyOR(PolicyA, PolicyC). Its digest depends on that NV index's
 * Name, so it is taken from the profile rather than computed.
 */
const EK_POLICY_C: Readonly<Record<number, string>> = {
  [TpmAlg.Sha384]:
    'd6032ce61f2fb3c240eb3cf6a33237ef2b6a16f4293c22b455e261cffd217ad5b4947c2d73e63005eed2dc2b3593d165',
  [TpmAlg.Sha512]:
    '589ee1e146544716e8deafe6db247b01b81e9f9c7dd16b814aa159138749105fba5388dd1dea702f35240c184933121e2c61b8f50d3ef91393a49a38c3f73fc8',
}

function hashOf(hashAlg: number, ...parts: Uint8Array[]): Buffer {
  const name = nodeHashName(hashAlg)
  if (!name) throw new TpmUsageError(`unsupported policy hash 0x${hashAlg.toString(16)}`)
  const h = createHash(name)
  for (const p of parts) h.update(p)
  return h.digest()
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4)
  b.writeUInt32BE(v >>> 0)
  return b
}

/** PolicyA: the digest of PolicySecret(TPM_RH_ENDORSEMENT) with an empty policyRef (Part 3, 23.4). */
export function ekPolicyA(hashAlg: number): Buffer {
  const size = digestSize(hashAlg) ?? 32
  const updated = hashOf(hashAlg, Buffer.alloc(size), u32(TpmCc.PolicySecret), u32(TpmRh.Endorsement))
  return hashOf(hashAlg, updated)
}

/** PolicyOR digest of `digests` from a fresh session (Part 3, 23.6). */
export function policyOrDigest(hashAlg: number, digests: Uint8Array[]): Buffer {
  const size = digestSize(hashAlg) ?? 32
  return hashOf(hashAlg, Buffer.alloc(size), u32(TpmCc.PolicyOr), ...digests)
}

/**
 * A policy session satisfying the TCG EK policy, authorised with the endorsement password: PolicySecret
 * (TPM_RH_ENDORSEMENT) for the low-range templates, followed by PolicyOR(PolicyA, PolicyC) for a high-range EK
 * (e.g. swtpm's persistent RSA 3072 and ECC P-384 EKs), chosen by the EK's nameAlg and authPolicy. Used once (the
 * TPM flushes it after the command it authorises).
 */
export async function ekPolicySession(
  tpm: Tpm,
  endorsementPassword?: string | Uint8Array,
  ek: { nameAlg: number; authPolicy: Uint8Array } = {
    nameAlg: TpmAlg.Sha256,
    authPolicy: ekPolicyA(TpmAlg.Sha256),
  },
): Promise<PolicySession> {
  const policyA = ekPolicyA(ek.nameAlg)
  let orList: Uint8Array[] | null = null
  if (!policyA.equals(ek.authPolicy)) {
    const c = EK_POLICY_C[ek.nameAlg]
    const list = c ? [policyA, Buffer.from(c, 'hex')] : null
    if (!list || !policyOrDigest(ek.nameAlg, list).equals(ek.authPolicy)) {
      throw new TpmUsageError(
        'the EK authPolicy is none of the TCG EK policies (PolicyA, or PolicyB with SHA-384/512)',
      )
    }
    orList = list
  }
  const session = await startPolicySession(tpm, ek.nameAlg)
  try {
    await tpm.run(
      PolicySecret,
      {
        authHandle: TpmRh.Endorsement,
        policySession: session.handle,
        nonceTpm: new Uint8Array(0),
        cpHashA: new Uint8Array(0),
        policyRef: new Uint8Array(0),
        expiration: 0,
      },
      [new PasswordSession(endorsementPassword)],
    )
    if (orList) await tpm.run(PolicyOr, { policySession: session.handle, pHashList: orList })
  } catch (err) {
    await tpm.run(FlushContext, { flushHandle: session.handle }).catch(() => {})
    throw err
  }
  return session
}
