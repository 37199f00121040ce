/**
 * Adapters from the tenant's ports to the project's typed REST clients of the registrar, the agent and the
 * verifier; they only translate outcomes (404 -> null, failures -> `TenantError` with an exit code).
 */
import { AgentClient, AgentClientError, agentSupportedVersions } from '../api/agent/client.ts'
import { type ClientTls, PeerError } from '../api/client.ts'
import type { RegistrarClient } from '../api/registrar/client.ts'
import { VerifierClient, VerifierClientError } from '../api/verifier/client.ts'
import { EXIT_FAILED, EXIT_PEER, TenantError } from './errors.ts'
import type {
  AgentContact,
  AgentPort,
  DeleteOutcome,
  RegistrarAgentRecord,
  RegistrarPort,
  VerifierAgentStatus,
  VerifierPort,
} from './ports.ts'

const is404 = (err: unknown) => err instanceof PeerError && err.status === 404

/** HTTP status and the peer's envelope status text, from either client's error type. */
function peerAnswer(err: unknown): { status: number | undefined; text: string | undefined } {
  if (err instanceof PeerError) return { status: err.status, text: err.peerStatus }
  if (err instanceof VerifierClientError) return { status: err.httpStatus, text: err.verifierStatus }
  return { status: undefined, text: undefined }
}

function peerFailure(what: string, err: unknown): TenantError {
  if (err instanceof TenantError) return err
  const { status, text } = peerAnswer(err)
  const detail = text ? text : (err as Error).message
  return new TenantError(
    `${what}: ${detail}`,
    status !== undefined && status < 500 ? EXIT_FAILED : EXIT_PEER,
    {
      cause: err,
    },
  )
}

export function registrarPort(client: RegistrarClient): RegistrarPort {
  return {
    async getAgent(uuid) {
      let record: Awaited<ReturnType<RegistrarClient['show']>>
      try {
        record = await client.show(uuid)
      } catch (err) {
        if (is404(err)) return null
        throw peerFailure(`registrar lookup of ${uuid}`, err)
      }
      const { ek_tpm } = record
      if (ek_tpm === null) throw new TenantError(`registrar record of ${uuid} has no ek_tpm`, EXIT_FAILED)
      return { ...record, ek_tpm } satisfies RegistrarAgentRecord
    },
    async listAgents() {
      try {
        return await client.list()
      } catch (err) {
        throw peerFailure('registrar list', err)
      }
    },
    async deleteAgent(uuid) {
      try {
        await client.delete(uuid)
        return true
      } catch (err) {
        if (is404(err)) return false
        throw peerFailure(`registrar delete of ${uuid}`, err)
      }
    },
  }
}

/** Agent port over mTLS: the agent's self-signed certificate from the registrar is pinned, plus the tenant CAs. */
export function agentPortFactory(tls: { cert: string; key: string; ca: string[] }, timeoutMs: number) {
  return (contact: AgentContact): AgentPort => {
    const https = contact.mtlsCert !== null && contact.mtlsCert !== 'disabled'
    const client = new AgentClient({
      baseUrl: `${https ? 'https' : 'http'}://${contact.ip.includes(':') ? `[${contact.ip}]` : contact.ip}:${contact.port}`,
      apiVersion: contact.apiVersion,
      timeoutMs,
      ...(https
        ? { tls: { cert: tls.cert, key: tls.key, ca: [contact.mtlsCert as string, ...tls.ca] } }
        : {}),
    })
    return {
      supportedVersions: async () => agentSupportedVersions(await client.getVersion()),
      identityQuote: (nonce) => client.identityQuote(nonce),
      postUkey: (body) => client.postUkey(body),
      verify: async (challenge) => {
        try {
          return { state: 'derived', hmac: (await client.verify(challenge)).hmac }
        } catch (err) {
          // 422: our agent refused the payload that came with K. Anything else (400 "Bootstrap key not yet
          // available.", an unreachable agent) may still change, as upstream's tenant assumes.
          if (err instanceof AgentClientError && err.httpStatus === 422)
            return {
              state: 'refused',
              reason: (err.agentStatus ?? err.message).replace(/^payload refused: /, ''),
            }
          return { state: 'pending', detail: (err as Error).message }
        }
      },
      close: () => client.close(),
    }
  }
}

/**
 * The verifier port over the project's one verifier client (`src/api/verifier/client.ts`): 404s become null/false
 * where the port allows them, other failures a `TenantError` with the verifier's status text.
 */
export function verifierPort(opts: {
  baseUrl: string
  apiVersion: string
  tls: ClientTls
  timeoutMs: number
}): VerifierPort & { close(): Promise<void> } {
  const client = new VerifierClient(opts)
  const call = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn()
    } catch (err) {
      throw peerFailure(what, err)
    }
  }
  return {
    addAgent: (uuid, body) =>
      call(`verifier enrollment of ${uuid}`, async () => {
        try {
          await client.addAgent(uuid, body)
        } catch (err) {
          if (err instanceof VerifierClientError && err.httpStatus === 409) {
            throw new TenantError(
              `agent ${uuid} is already enrolled at the verifier: delete or update it first`,
            )
          }
          throw err
        }
      }),
    getAgent: (uuid) =>
      call(
        `verifier status of ${uuid}`,
        async () => (await client.getAgent(uuid)) as VerifierAgentStatus | null,
      ),
    listAgents: (verifierId) => call('verifier list', () => client.listAgents(verifierId)),
    bulkInfo: (verifierId) =>
      call(
        'verifier bulk info',
        async () => (await client.bulkInfo(verifierId)) as Record<string, VerifierAgentStatus>,
      ),
    deleteAgent: (uuid) =>
      call(`verifier delete of ${uuid}`, (): Promise<DeleteOutcome> => client.deleteAgent(uuid)),
    reactivateAgent: (uuid) => call(`verifier reactivate of ${uuid}`, () => client.reactivateAgent(uuid)),
    stopAgent: (uuid) => call(`verifier stop of ${uuid}`, () => client.stopAgent(uuid)),
    addRuntimePolicy: (name, body, update) =>
      call(`runtime policy ${name}`, () => client.putRuntimePolicy(name, body, update)),
    getRuntimePolicy: (name) => call(`runtime policy ${name}`, () => client.getRuntimePolicy(name)),
    deleteRuntimePolicy: (name) => call(`runtime policy ${name}`, () => client.deleteRuntimePolicy(name)),
    listRuntimePolicies: () => call('runtime policy list', () => client.listRuntimePolicies()),
    addMbPolicy: (name, mbPolicy, update) =>
      call(`measured-boot policy ${name}`, () => client.putMbPolicy(name, mbPolicy, update)),
    getMbPolicy: (name) => call(`measured-boot policy ${name}`, () => client.getMbPolicy(name)),
    deleteMbPolicy: (name) => call(`measured-boot policy ${name}`, () => client.deleteMbPolicy(name)),
    listMbPolicies: () => call('measured-boot policy list', () => client.listMbPolicies()),
    close: () => client.close(),
  }
}
