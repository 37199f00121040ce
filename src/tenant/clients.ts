/**
 * Adapters from the tenant's ports to the real REST clients: the registrar's typed client, the agent's typed
 * client and the verifier's v2 API through the shared JSON client and the verifier's schemas.
 */
import { AgentClient, agentSupportedVersions } from '../api/agent/client.ts'
import { type ClientTls, JsonClient, PeerError } from '../api/client.ts'
import type { RegistrarClient } from '../api/registrar/client.ts'
import {
  AgentList,
  AgentStatus,
  BulkAgents,
  MbPolicyNames,
  MbPolicyShow,
  RuntimePolicyNames,
  RuntimePolicyShow,
} from '../api/verifier/schemas.ts'
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

function peerFailure(what: string, err: unknown): TenantError {
  if (err instanceof TenantError) return err
  const status = err instanceof PeerError ? err.status : undefined
  const detail = err instanceof PeerError && err.peerStatus ? err.peerStatus : (err as Error).message
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
      try {
        return (await client.show(uuid)) as unknown as RegistrarAgentRecord
      } catch (err) {
        if (is404(err)) return null
        throw peerFailure(`registrar lookup of ${uuid}`, err)
      }
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
      verify: async (challenge) => (await client.verify(challenge)).hmac,
      close: () => client.close(),
    }
  }
}

export function verifierPort(opts: {
  baseUrl: string
  apiVersion: string
  tls: ClientTls
  timeoutMs: number
}): VerifierPort & { close(): Promise<void> } {
  const http = new JsonClient({ baseUrl: opts.baseUrl, tls: opts.tls, timeoutMs: opts.timeoutMs })
  const p = (path: string) => `/v${opts.apiVersion}${path}`
  const id = (uuid: string) => encodeURIComponent(uuid)
  const call = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn()
    } catch (err) {
      throw peerFailure(what, err)
    }
  }
  const orNull = async <T>(what: string, fn: () => Promise<T>): Promise<T | null> => {
    try {
      return await fn()
    } catch (err) {
      if (is404(err)) return null
      throw peerFailure(what, err)
    }
  }
  return {
    addAgent: (uuid, body) =>
      call(`verifier enrollment of ${uuid}`, async () => {
        try {
          await http.request('POST', p(`/agents/${id(uuid)}`), { body })
        } catch (err) {
          if (err instanceof PeerError && err.status === 409) {
            throw new TenantError(
              `agent ${uuid} is already enrolled at the verifier: delete or update it first`,
            )
          }
          throw err
        }
      }),
    getAgent: (uuid) =>
      orNull(
        `verifier status of ${uuid}`,
        async () =>
          (await http.request('GET', p(`/agents/${id(uuid)}`), { results: AgentStatus }))
            .results as VerifierAgentStatus,
      ),
    listAgents: (verifierId) =>
      call('verifier list', async () => {
        const res = await http.request('GET', p('/agents/'), {
          query: { verifier: verifierId },
          results: AgentList,
        })
        return res.results.uuids.map((row) => row[0] as string)
      }),
    bulkInfo: (verifierId) =>
      call(
        'verifier bulk info',
        async () =>
          (
            await http.request('GET', p('/agents/'), {
              query: { bulk: 'True', verifier: verifierId },
              results: BulkAgents,
            })
          ).results as Record<string, VerifierAgentStatus>,
      ),
    deleteAgent: (uuid) =>
      call(`verifier delete of ${uuid}`, async (): Promise<DeleteOutcome> => {
        try {
          const res = await http.request('DELETE', p(`/agents/${id(uuid)}`))
          return res.status === 202 ? 'terminating' : 'deleted'
        } catch (err) {
          if (is404(err)) return 'not-found'
          throw err
        }
      }),
    reactivateAgent: (uuid) =>
      call(`verifier reactivate of ${uuid}`, async () => {
        await http.request('PUT', p(`/agents/${id(uuid)}/reactivate`), { body: {} })
      }),
    stopAgent: (uuid) =>
      call(`verifier stop of ${uuid}`, async () => {
        await http.request('PUT', p(`/agents/${id(uuid)}/stop`), { body: {} })
      }),
    addRuntimePolicy: (name, body, update) =>
      call(`runtime policy ${name}`, async () => {
        await http.request(update ? 'PUT' : 'POST', p(`/allowlists/${id(name)}`), { body })
      }),
    getRuntimePolicy: (name) =>
      orNull(
        `runtime policy ${name}`,
        async () =>
          (await http.request('GET', p(`/allowlists/${id(name)}`), { results: RuntimePolicyShow }))
            .results as Record<string, unknown>,
      ),
    deleteRuntimePolicy: (name) =>
      call(`runtime policy ${name}`, async () => {
        try {
          await http.request('DELETE', p(`/allowlists/${id(name)}`))
          return true
        } catch (err) {
          if (is404(err)) return false
          // 204 has no envelope: the JSON client reports it as a reply without JSON
          if (err instanceof PeerError && err.status === 204) return true
          throw err
        }
      }),
    listRuntimePolicies: () =>
      call(
        'runtime policy list',
        async () =>
          (await http.request('GET', p('/allowlists/'), { results: RuntimePolicyNames })).results[
            'runtimepolicy names'
          ],
      ),
    addMbPolicy: (name, mbPolicy, update) =>
      call(`measured-boot policy ${name}`, async () => {
        await http.request(update ? 'PUT' : 'POST', p(`/mbpolicies/${id(name)}`), {
          body: { mb_policy: mbPolicy },
        })
      }),
    getMbPolicy: (name) =>
      orNull(
        `measured-boot policy ${name}`,
        async () =>
          (await http.request('GET', p(`/mbpolicies/${id(name)}`), { results: MbPolicyShow }))
            .results as Record<string, unknown>,
      ),
    deleteMbPolicy: (name) =>
      call(`measured-boot policy ${name}`, async () => {
        try {
          await http.request('DELETE', p(`/mbpolicies/${id(name)}`))
          return true
        } catch (err) {
          if (is404(err)) return false
          if (err instanceof PeerError && err.status === 204) return true
          throw err
        }
      }),
    listMbPolicies: () =>
      call(
        'measured-boot policy list',
        async () =>
          (await http.request('GET', p('/mbpolicies/'), { results: MbPolicyNames })).results[
            'mbpolicy names'
          ],
      ),
    close: () => http.close(),
  }
}
