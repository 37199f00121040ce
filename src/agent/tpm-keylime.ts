/** `AgentTpm` over team TPM's library (`src/tpm/keylime-client.ts`); the `Tpm` class queues commands itself. */
import {
  activateCredential,
  certifyObject,
  createAk,
  createDeviceIdKey,
  createEk,
  flushContext,
  flushTransientObjects,
  getHandleCounts,
  loadAk,
  pcrExtend,
  pcrRead,
  pcrReset,
  quote,
  readEkCaChain,
  readEkCertificate,
  readNvCertificate,
  readPublic,
} from '../tpm/keylime-client.ts'
import { Tpm } from '../tpm/tpm.ts'
import type { AgentTpm } from './agent-tpm.ts'

export async function openKeylimeTpm(
  transport: string,
  opts: { endorsementPassword?: string } = {},
): Promise<AgentTpm> {
  const tpm = await Tpm.open(transport)
  const auth = opts.endorsementPassword ? { endorsementPassword: opts.endorsementPassword } : {}
  return {
    async ek(alg, persistentHandle) {
      if (persistentHandle !== null) {
        const { publicArea } = await readPublic(tpm, persistentHandle)
        return { handle: persistentHandle, publicArea }
      }
      const ek = await createEk(tpm, alg, auth)
      return { handle: ek.handle, publicArea: ek.publicArea }
    },
    readEkCertificate: (alg, ekPublicArea) => readEkCertificate(tpm, alg, ekPublicArea),
    createAk: (ekHandle, algs) => createAk(tpm, ekHandle, algs, auth),
    loadAk: (ekHandle, pub, priv) => loadAk(tpm, ekHandle, pub, priv, auth),
    activateCredential: (args) => activateCredential(tpm, args, auth),
    quote: (akHandle, args) => quote(tpm, akHandle, args),
    pcrRead: (hashAlg, pcrs) => pcrRead(tpm, hashAlg, pcrs),
    pcrReset: (pcr) => pcrReset(tpm, pcr),
    pcrExtend: (pcr, digests) => pcrExtend(tpm, pcr, digests),
    readEkCaChain: () => readEkCaChain(tpm),
    async deviceIdKey(kind, source) {
      if ('handle' in source) {
        const { publicArea } = await readPublic(tpm, source.handle)
        return { handle: source.handle, publicArea }
      }
      const key = await createDeviceIdKey(tpm, kind, source.template, auth)
      return { handle: key.handle, publicArea: key.publicArea }
    },
    readNvCertificate: (index) => readNvCertificate(tpm, index),
    certify: (args) =>
      certifyObject(tpm, {
        objectHandle: args.objectHandle,
        signHandle: args.signHandle,
        qualifyingData: args.qualifyingData,
        ...(args.signPassword ? { signPassword: args.signPassword } : {}),
      }),
    flush: (handle) => flushContext(tpm, handle),
    flushStaleObjects: () => flushTransientObjects(tpm),
    handleCounts: () => getHandleCounts(tpm),
    close: () => tpm.close(),
  }
}
