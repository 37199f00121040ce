/**
 * deploy/kubernetes: every overlay renders with `kubectl kustomize` (offline), every object passes the Kubernetes
 * API schema (kubernetes-models), and the wiring holds (probes on the probe listener's port, scrape annotations,
 * PDB and Service selectors, Secrets and ConfigMaps that exist or that the CA Job writes, the image's user).
 *
 * Then "pods as processes": the demo and push overlays' CA Job, registrar, verifier replicas and agent run as local
 * processes with the manifests' commands, environment and mounted files. ConfigMaps and Secrets are written to temp folders in
 * place of their mount paths; the Job's Secrets are made by kubectl itself (`create secret --dry-run=client`) from
 * what its first container issued. What the test substitutes, and nothing else: mount paths by temp folders,
 * Service names and the pod address by 127.0.0.1, the container ports by free ports (through the services'
 * KEYLIME_*_PORT variables), `/dev/tpmrm0` by a swtpm, and the demo's PostgreSQL by databases of the test's own
 * (the push agent's verifier_url by the forwarder below, standing in for the Service).
 * An agent is enrolled through one verifier replica, read through the other, and keeps being attested when the
 * replica holding its lease stops. The push overlay the same way: its push agent reaches the two push-mode replicas
 * through a round-robin stand-in for their Service, and attests with requests answered by both.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process'
import {
  chmodSync,
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs'
import { createServer } from 'node:https'
import { tmpdir } from 'node:os'
import { basename, join, resolve } from 'node:path'
import * as apps from 'kubernetes-models/apps/v1'
import * as batch from 'kubernetes-models/batch/v1'
import * as networking from 'kubernetes-models/networking.k8s.io/v1'
import * as policy from 'kubernetes-models/policy/v1'
import * as rbac from 'kubernetes-models/rbac.authorization.k8s.io/v1'
import * as core from 'kubernetes-models/v1'
import pg from 'pg'
import { Agent, request } from 'undici'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseAllDocuments } from 'yaml'
import { waitFor } from '../../src/devtools/local-cluster.ts'
import { freshPgDatabase } from '../chaos/harness.ts'
import { runKeylime } from '../helpers/cli.ts'
import { freeLocalPort } from '../helpers/free-port.ts'
import { type SwtpmInstance, startSwtpm, swtpmLocalCaCertificates } from '../helpers/swtpm.ts'

const ROOT = resolve(import.meta.dirname, '../..')
const KUSTOMIZE = join(ROOT, 'deploy/kubernetes')
const OVERLAYS = readdirSync(join(KUSTOMIZE, 'overlays')).sort()

// biome-ignore lint/suspicious/noExplicitAny: rendered YAML is untyped until the schema check
type Obj = any
type Env = Record<string, string>

function render(overlay: string): Obj[] {
  const r = spawnSync('kubectl', ['kustomize', join(KUSTOMIZE, 'overlays', overlay)], {
    encoding: 'utf8',
    timeout: 60_000,
  })
  if (r.status !== 0) throw new Error(`kubectl kustomize ${overlay}: ${r.stderr}`)
  return parseAllDocuments(r.stdout)
    .map((d) => d.toJS())
    .filter(Boolean)
}

const MODELS: Record<string, Record<string, unknown>> = {
  v1: core,
  'apps/v1': apps,
  'batch/v1': batch,
  'policy/v1': policy,
  'networking.k8s.io/v1': networking,
  'rbac.authorization.k8s.io/v1': rbac,
}

function validate(o: Obj): void {
  const Model = MODELS[o.apiVersion]?.[o.kind] as (new (d: Obj) => { validate(): void }) | undefined
  if (!Model) throw new Error(`no schema for ${o.apiVersion} ${o.kind}`)
  // kustomize wraps long base64 values over lines, which the API server's decoder accepts
  const data = o.kind === 'Secret' && o.data
  const normalized = data
    ? {
        ...o,
        data: Object.fromEntries(Object.entries(data).map(([k, v]) => [k, String(v).replace(/\s/g, '')])),
      }
    : o
  new Model(normalized).validate()
}

const byKind = (objs: Obj[], kind: string) => objs.filter((o) => o.kind === kind)
const named = (objs: Obj[], kind: string, name: string) =>
  objs.find((o) => o.kind === kind && o.metadata.name === name)
const workloads = (objs: Obj[]) =>
  objs.filter((o) => ['Deployment', 'DaemonSet', 'Job', 'StatefulSet'].includes(o.kind))
const keylimeContainers = (pod: Obj): Obj[] =>
  [...(pod.initContainers ?? []), ...pod.containers].filter((c: Obj) => c.image.includes('keylime'))
const selects = (selector: Record<string, string>, labels: Record<string, string>) =>
  Object.entries(selector).every(([k, v]) => labels?.[k] === v)

/** Secrets the CA bootstrap Job creates (read from its `kubectl create secret` lines). */
function jobSecrets(objs: Obj[]): { name: string; from: string }[] {
  const job = named(objs, 'Job', 'keylime-ca-bootstrap')
  const script: string = job.spec.template.spec.containers[0].command.join(' ')
  return [...script.matchAll(/kubectl create secret generic (\S+) --from-file=(\S+)/g)].map((m) => ({
    name: m[1] as string,
    from: m[2] as string,
  }))
}

describe.each(OVERLAYS)('overlay %s', (overlay) => {
  const objs = render(overlay)

  it('renders, and every object passes the Kubernetes API schema', () => {
    expect(objs.length).toBeGreaterThan(15)
    for (const o of objs) expect(() => validate(o), `${o.kind}/${o.metadata?.name}`).not.toThrow()
    // the schema check is real: a wrong type is refused
    const broken = structuredClone(named(objs, 'Deployment', 'keylime-verifier'))
    broken.spec.template.spec.containers[0].ports[0].containerPort = 'api'
    expect(() => validate(broken)).toThrow(/containerPort must be integer/)
  })

  it('wires probes, scraping, disruption budgets, Services and volumes to what exists', () => {
    const configMaps = new Set(byKind(objs, 'ConfigMap').map((o) => o.metadata.name))
    const secrets = new Set([
      ...byKind(objs, 'Secret').map((o) => o.metadata.name),
      ...jobSecrets(objs).map((s) => s.name),
    ])
    expect([...secrets]).toEqual(expect.arrayContaining(['keylime-tls', 'keylime-ca-cert', 'keylime-ca']))
    const containerfile = readFileSync(join(ROOT, 'Containerfile'), 'utf8')
    const imageUid = Number(/^USER (\d+)/m.exec(containerfile)?.[1])
    for (const w of workloads(objs)) {
      const pod = w.spec.template.spec
      for (const v of pod.volumes ?? []) {
        if (v.configMap)
          expect(configMaps, `${w.metadata.name}: ${v.configMap.name}`).toContain(v.configMap.name)
        // production expects the operator's keylime-database Secret (documented in its kustomization)
        if (v.secret) expect(secrets).toContain(v.secret.secretName)
      }
      for (const c of keylimeContainers(pod)) {
        for (const e of c.env ?? []) {
          const ref = e.valueFrom?.secretKeyRef
          if (ref && !(overlay === 'production' && ref.name === 'keylime-database'))
            expect(secrets, `${c.name}: ${ref.name}`).toContain(ref.name)
        }
        if (w.kind === 'Job') continue
        if (c.command[1] === 'push-agent') {
          // listens on nothing: no port, no probe listener to probe or scrape; root only for the TPM and securityfs
          expect(c.ports).toBeUndefined()
          expect([c.livenessProbe, c.readinessProbe, c.startupProbe]).toEqual([
            undefined,
            undefined,
            undefined,
          ])
          expect(w.spec.template.metadata.annotations).toBeUndefined()
          expect(c.securityContext.runAsUser).toBe(0)
          continue
        }
        // probes on the probe listener: the port named metrics is the metrics_port of the component's config
        const metrics = c.ports.find((p: Obj) => p.name === 'metrics').containerPort
        expect(c.livenessProbe.httpGet).toEqual({ path: '/healthz', port: 'metrics' })
        expect(c.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'metrics' })
        const conf = named(objs, 'ConfigMap', 'keylime-config').data[`${c.command[1]}.conf`]
        expect(conf).toMatch(new RegExp(`^metrics_port = ${metrics}$`, 'm'))
        expect(conf).toMatch(/^metrics_ip = "?0\.0\.0\.0"?$/m)
        // the image sets the port in its environment, which beats the file: the pod must agree or override it
        const portVariable = `KEYLIME_${c.command[1].toUpperCase()}_METRICS_PORT`
        const override = c.env.find((e: Obj) => e.name === portVariable)
        if (override) expect(override.value).toBe(String(metrics))
        else expect(containerfile).toContain(`${portVariable}=${metrics}`)
        expect(w.spec.template.metadata.annotations).toMatchObject({
          'prometheus.io/scrape': 'true',
          'prometheus.io/port': String(metrics),
          'prometheus.io/path': '/metrics',
        })
        // the services run as the image's unprivileged user; only the agent asks for root (TPM, securityfs)
        const user = c.securityContext?.runAsUser ?? pod.securityContext?.runAsUser
        if (w.kind === 'DaemonSet') expect(user).toBe(0)
        else {
          expect(user).toBe(imageUid)
          expect(c.securityContext).toMatchObject({
            allowPrivilegeEscalation: false,
            readOnlyRootFilesystem: true,
          })
        }
      }
    }
    for (const pdb of byKind(objs, 'PodDisruptionBudget')) {
      const target = byKind(objs, 'Deployment').filter((d) =>
        selects(pdb.spec.selector.matchLabels, d.spec.template.metadata.labels),
      )
      expect(target).toHaveLength(1)
      expect(target[0].spec.replicas).toBeGreaterThan(pdb.spec.minAvailable)
    }
    for (const svc of byKind(objs, 'Service'))
      expect(
        workloads(objs).filter((w) => selects(svc.spec.selector, w.spec.template.metadata.labels)),
      ).toHaveLength(1)
    for (const np of byKind(objs, 'NetworkPolicy'))
      expect(
        workloads(objs).some((w) =>
          selects(np.spec.podSelector.matchLabels, w.spec.template.metadata.labels),
        ),
      ).toBe(true)
    const verifier = named(objs, 'Deployment', 'keylime-verifier')
    expect(verifier.spec.replicas).toBeGreaterThanOrEqual(2)
    const pullAgent = named(objs, 'DaemonSet', 'keylime-agent')
    const pushAgent = named(objs, 'DaemonSet', 'keylime-push-agent')
    // one kind of agent per overlay (both on one node would share its TPM identity)
    expect([pullAgent, pushAgent].filter(Boolean)).toHaveLength(1)
    const agent = pullAgent ?? pushAgent
    expect(agent.spec.template.spec.volumes).toContainEqual({
      name: 'tpm',
      hostPath: { path: '/dev/tpmrm0', type: 'CharDevice' },
    })
    const verifierEnv = verifier.spec.template.spec.containers[0].env
    if (pushAgent) {
      expect(verifierEnv).toContainEqual({ name: 'KEYLIME_VERIFIER_MODE', value: 'push' })
      // nothing connects to a push agent: the pod network is enough
      expect(pushAgent.spec.template.spec.hostNetwork).toBeUndefined()
      // it reaches the registrar and the verifiers through their Services' ports
      const pod = pushAgent.spec.template.spec
      const confVolume = pod.volumes.find((v: Obj) => v.configMap)
      const conf: string = named(objs, 'ConfigMap', confVolume.configMap.name).data['push-agent.conf']
      expect(pod.containers[0].env).toContainEqual({
        name: 'KEYLIME_AGENT_CONFIG',
        value: '/etc/keylime/push-agent.conf',
      })
      const servicePorts = (name: string): number[] =>
        named(objs, 'Service', name).spec.ports.map((p: Obj) => p.port)
      const url = new URL(/^verifier_url = "(.*)"$/m.exec(conf)?.[1] ?? '')
      expect(url.protocol).toBe('https:')
      expect(servicePorts(url.hostname)).toContain(Number(url.port))
      const registrarHost = /^registrar_ip = "(.*)"$/m.exec(conf)?.[1] ?? ''
      expect(servicePorts(registrarHost)).toContain(Number(/^registrar_port = (\d+)$/m.exec(conf)?.[1]))
      // its NetworkPolicies admit nothing in and let out only registration, the verifiers and DNS
      const policies = byKind(objs, 'NetworkPolicy').filter((n) =>
        selects(n.spec.podSelector.matchLabels, pushAgent.spec.template.metadata.labels),
      )
      expect(policies.flatMap((n) => n.spec.ingress ?? [])).toEqual([])
      expect(policies.filter((n) => n.spec.policyTypes.includes('Egress'))).toHaveLength(1)
      const np = named(objs, 'NetworkPolicy', 'keylime-push-agent')
      expect(np.spec.policyTypes).toEqual(['Ingress', 'Egress'])
      expect(np.spec.ingress ?? []).toEqual([])
      const targets = np.spec.egress.map((e: Obj) => [
        e.to[0].podSelector.matchLabels['app.kubernetes.io/name'] ??
          e.to[0].podSelector.matchLabels['k8s-app'],
        e.ports.map((p: Obj) => p.port),
      ])
      expect(targets).toEqual([
        ['keylime-registrar', servicePorts('keylime-registrar')],
        ['keylime-verifier', servicePorts('keylime-verifier')],
        ['kube-dns', [53, 53]],
      ])
      return
    }
    expect(verifierEnv.find((e: Obj) => e.name === 'KEYLIME_VERIFIER_MODE')).toBeUndefined()
    // the node's address, stable across agent restarts, is the one the verifier keeps
    expect(agent.spec.template.spec).toMatchObject({
      hostNetwork: true,
      dnsPolicy: 'ClusterFirstWithHostNet',
    })
    expect(agent.spec.template.spec.containers[0].env).toContainEqual({
      name: 'KEYLIME_AGENT_CONTACT_IP',
      valueFrom: { fieldRef: { fieldPath: 'status.hostIP' } },
    })
  })
})

// ---- pods as processes ----

interface Pod {
  name: string
  env: Env
  argv: string[]
  /** mount path -> local folder (or, for the TPM, the swtpm transport) */
  mounts: [string, string][]
}

const work = mkdtempSync(join(tmpdir(), 'keylime-k8s-'))
const children: ChildProcess[] = []
const cleanups: (() => Promise<unknown> | unknown)[] = []
afterAll(async () => {
  await Promise.all(
    children.map(
      (c) =>
        new Promise<void>((done) => {
          if (c.exitCode !== null || c.signalCode !== null) return done()
          c.once('exit', () => done())
          c.kill('SIGTERM')
          setTimeout(() => c.kill('SIGKILL'), 10_000).unref()
        }),
    ),
  )
  for (const c of cleanups.splice(0).reverse()) await c()
  rmSync(work, { recursive: true, force: true })
})

/** `$(VAR)` in command, args and env values, as the kubelet expands them. */
function expand(s: string, env: Env): string {
  return s.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, k: string) => env[k] ?? m)
}

/** Replaces, in one pass, every mount path (as a whole path prefix, longest first) and Service name in a string. */
function substitute(s: string, mounts: [string, string][], hosts: string[]): string {
  const literal = (x: string) => x.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  const paths = [...mounts].sort((a, b) => b[0].length - a[0].length)
  const local = new Map(paths)
  const out =
    paths.length === 0
      ? s
      : s.replace(
          new RegExp(`(?<![\\w./-])(${paths.map(([p]) => literal(p)).join('|')})(?![\\w.-])`, 'g'),
          (p) => local.get(p) as string,
        )
  return hosts.reduce(
    (acc, h) => acc.replace(new RegExp(`(?<![\\w.-])${literal(h)}(?![\\w.-])`, 'g'), '127.0.0.1'),
    out,
  )
}

/**
 * One container of a pod as a local process description: volumes materialised under `dir`, env resolved (values,
 * ConfigMap/Secret keys, downward API), strings rewritten to the local paths and hosts.
 */
function localPod(
  objs: Obj[],
  secrets: Map<string, Record<string, string>>,
  podSpec: Obj,
  container: Obj,
  dir: string,
  opts: { namespace: string; hosts: string[]; special?: Record<string, string> },
): Pod {
  const mounts: [string, string][] = []
  const files: { path: string; text: string; mode: number }[] = []
  for (const m of container.volumeMounts ?? []) {
    const v = podSpec.volumes.find((x: Obj) => x.name === m.name)
    const special = opts.special?.[m.mountPath]
    if (special !== undefined) {
      mounts.push([m.mountPath, special])
      continue
    }
    const local = join(dir, 'volumes', m.name)
    mkdirSync(local, { recursive: true })
    mounts.push([m.mountPath, local])
    if (v.configMap) {
      const data = named(objs, 'ConfigMap', v.configMap.name).data as Env
      for (const [k, text] of Object.entries(data)) files.push({ path: join(local, k), text, mode: 0o644 })
    } else if (v.secret) {
      const data = secrets.get(v.secret.secretName)
      if (!data) throw new Error(`Secret ${v.secret.secretName} does not exist`)
      for (const [k, text] of Object.entries(data))
        files.push({ path: join(local, k), text, mode: v.secret.defaultMode ?? 0o644 })
    }
  }
  const env: Env = {}
  for (const e of container.env ?? []) {
    const from = e.valueFrom
    if (from?.fieldRef)
      env[e.name] = {
        'metadata.namespace': opts.namespace,
        'status.podIP': '127.0.0.1',
        'status.hostIP': '127.0.0.1',
      }[from.fieldRef.fieldPath as string] as string
    else if (from?.secretKeyRef)
      env[e.name] = secrets.get(from.secretKeyRef.name)?.[from.secretKeyRef.key] as string
    else env[e.name] = expand(e.value, env)
    if (env[e.name] === undefined) throw new Error(`${container.name}: ${e.name} cannot be resolved`)
  }
  for (const f of files) {
    // config files name mount paths and Service hosts too
    writeFileSync(f.path, f.path.endsWith('.conf') ? substitute(f.text, mounts, opts.hosts) : f.text)
    chmodSync(f.path, f.mode)
  }
  for (const k of Object.keys(env)) env[k] = substitute(env[k] as string, mounts, opts.hosts)
  const argv = [...(container.command ?? []), ...(container.args ?? [])].map((a) =>
    substitute(expand(a, env), mounts, opts.hosts),
  )
  return { name: container.name, env, argv, mounts }
}

/** `keylime` on PATH: this checkout's CLI, run from source. */
function keylimeOnPath(): string {
  const bin = join(work, 'bin')
  mkdirSync(bin, { recursive: true })
  writeFileSync(
    join(bin, 'keylime'),
    `#!/bin/sh\nKEYLIME_FROM_SOURCE=1 exec ${process.execPath} ${join(ROOT, 'bin/keylime.js')} "$@"\n`,
  )
  chmodSync(join(bin, 'keylime'), 0o755)
  return bin
}

function run(pod: Pod, extraEnv: Env, bin: string): ChildProcess {
  const [cmd, ...args] = pod.argv as [string, ...string[]]
  const child = spawn(cmd, args, {
    env: { PATH: `${bin}:${process.env.PATH}`, ...pod.env, ...extraEnv, KEYLIME_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let stderr = ''
  child.stderr?.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000)
  })
  child.once('exit', (code, signal) => {
    if (code && code !== 0) console.error(`${pod.name} exited ${code} ${signal ?? ''}: ${stderr}`)
  })
  children.push(child)
  return child
}

/** The kubelet's readiness probe; a process that exited fails the wait at once. */
async function ready(port: number, child?: ChildProcess): Promise<boolean | undefined> {
  if (child && child.exitCode !== null) throw new Error(`exited with ${child.exitCode} before it was ready`)
  try {
    const r = await request(`http://127.0.0.1:${port}/readyz`, { reset: true, headersTimeout: 3000 })
    await r.body.dump()
    return r.statusCode === 200 ? true : undefined
  } catch {
    return undefined
  }
}

/**
 * One overlay's pods as processes: its Secrets decoded, its PostgreSQL replaced by fresh databases of the test's own,
 * a swtpm for the node's TPM, and the CA Job run the way the cluster runs it (registers a beforeAll and one test).
 */
function overlayPods(overlay: string) {
  const objs = render(overlay)
  const namespace: string = objs.find((o) => o.kind === 'Namespace').metadata.name
  const hosts = byKind(objs, 'Service').map((s) => s.metadata.name as string)
  const secrets = new Map<string, Record<string, string>>()
  const ctx = {
    objs,
    namespace,
    hosts,
    secrets,
    bin: '',
    swtpm: undefined as unknown as SwtpmInstance,
    databases: {} as Record<string, string>,
    dir: join(work, overlay),
  }

  beforeAll(async () => {
    ctx.bin = keylimeOnPath()
    for (const s of byKind(objs, 'Secret'))
      secrets.set(
        s.metadata.name,
        Object.fromEntries(
          Object.entries(s.data as Env).map(([k, v]) => [k, Buffer.from(v, 'base64').toString()]),
        ),
      )
    // the overlay's in-cluster PostgreSQL becomes databases of this test's own
    const dbSecret = [...secrets.keys()].find((k) => k.startsWith('keylime-database')) as string
    for (const key of ['verifier', 'registrar']) {
      const db = await freshPgDatabase()
      cleanups.push(() => db.drop())
      ctx.databases[key] = db.url
      ;(secrets.get(dbSecret) as Env)[key] = db.url
    }
    ctx.swtpm = await startSwtpm({ dir: join(ctx.dir, 'swtpm') })
    cleanups.push(() => ctx.swtpm.stop())
  }, 60_000)

  it('the CA Job issues the TLS material; kubectl turns it into the Secrets the pods mount', async () => {
    const job = named(objs, 'Job', 'keylime-ca-bootstrap').spec.template.spec
    const dir = join(ctx.dir, 'job')
    const issue = localPod(objs, secrets, job, job.initContainers[0], dir, { namespace, hosts: [] })
    const child = run(issue, {}, ctx.bin)
    const code = await new Promise((r) => child.once('exit', r))
    expect(code).toBe(0)
    const publish = localPod(objs, secrets, job, job.containers[0], dir, { namespace, hosts: [] })
    const workDir = publish.mounts.find(([p]) => p === '/work')?.[1] as string
    for (const s of jobSecrets(objs)) {
      const from = s.from.replace('/work', workDir)
      const r = spawnSync(
        'kubectl',
        ['create', 'secret', 'generic', s.name, `--from-file=${from}`, '--dry-run=client', '-o', 'json'],
        { encoding: 'utf8', timeout: 60_000 },
      )
      expect(r.status, r.stderr).toBe(0)
      const secret = JSON.parse(r.stdout)
      secrets.set(
        s.name,
        Object.fromEntries(
          Object.entries(secret.data as Env).map(([k, v]) => [k, Buffer.from(v, 'base64').toString()]),
        ),
      )
    }
    expect(Object.keys(secrets.get('keylime-tls') ?? {}).sort()).toEqual([
      'cacert.crt',
      'client-cert.crt',
      'client-private.pem',
      'server-cert.crt',
      'server-private.pem',
    ])
    expect(Object.keys(secrets.get('keylime-ca-cert') ?? {})).toEqual(['cacert.crt'])
    expect(Object.keys(secrets.get('keylime-ca') ?? {})).toContain('ca-private.pem')
  }, 60_000)

  /** The registrar Deployment's pod on free ports, ready as its readiness probe says. */
  async function startRegistrar() {
    const ports = {
      registrar: await freeLocalPort(),
      registrarTls: await freeLocalPort(),
      metrics: await freeLocalPort(),
    }
    const reg = named(objs, 'Deployment', 'keylime-registrar').spec.template.spec
    const pod = localPod(objs, secrets, reg, reg.containers[0], join(ctx.dir, 'registrar'), {
      namespace,
      hosts,
    })
    const child = run(
      pod,
      {
        KEYLIME_REGISTRAR_IP: '127.0.0.1',
        KEYLIME_REGISTRAR_PORT: String(ports.registrar),
        KEYLIME_REGISTRAR_TLS_PORT: String(ports.registrarTls),
        KEYLIME_REGISTRAR_METRICS_IP: '127.0.0.1',
        KEYLIME_REGISTRAR_METRICS_PORT: String(ports.metrics),
      },
      ctx.bin,
    )
    return { ports, child }
  }

  /** Every replica of the verifier Deployment, each on free ports (not yet waited for). */
  async function startVerifiers(registrarTlsPort: number, extraEnv: Env) {
    const ver = named(objs, 'Deployment', 'keylime-verifier')
    const replicas: { port: number; metrics: number; child: ChildProcess; pod: Pod }[] = []
    for (let i = 0; i < ver.spec.replicas; i++) {
      const [port, metrics] = [await freeLocalPort(), await freeLocalPort()]
      const spec = ver.spec.template.spec
      const pod = localPod(objs, secrets, spec, spec.containers[0], join(ctx.dir, `verifier-${i}`), {
        namespace,
        hosts,
      })
      const child = run(
        pod,
        {
          KEYLIME_VERIFIER_IP: '127.0.0.1',
          KEYLIME_VERIFIER_PORT: String(port),
          KEYLIME_VERIFIER_METRICS_IP: '127.0.0.1',
          KEYLIME_VERIFIER_METRICS_PORT: String(metrics),
          KEYLIME_VERIFIER_REGISTRAR_PORT: String(registrarTlsPort),
          ...extraEnv,
        },
        ctx.bin,
      )
      replicas.push({ port, metrics, child, pod })
    }
    return replicas
  }

  /** The agent DaemonSet's pod, with the swtpm as /dev/tpmrm0 and an empty IMA list in its securityfs. */
  function agentPod(daemonSet: string): Pod {
    const ds = named(objs, 'DaemonSet', daemonSet).spec.template.spec
    const pod = localPod(objs, secrets, ds, ds.containers[0], join(ctx.dir, 'agent'), {
      namespace,
      hosts,
      special: { '/dev/tpmrm0': ctx.swtpm.transport },
    })
    // securityfs: an empty IMA list (swtpm's PCR 10 is untouched); no boot log
    const securityfs = pod.mounts.find(([p]) => p === '/sys/kernel/security')?.[1] as string
    mkdirSync(join(securityfs, 'ima'), { recursive: true })
    writeFileSync(join(securityfs, 'ima/ascii_runtime_measurements'), '')
    return pod
  }

  /** The one agent id in the registrar's database (hash_ek: a 64-hex-digit id). */
  async function registeredAgent(): Promise<string> {
    const registrarDb = new pg.Client({ connectionString: ctx.databases.registrar })
    await registrarDb.connect()
    try {
      const ids = (await registrarDb.query('select agent_id from registrarmain')).rows.map((r) => r.agent_id)
      expect(ids).toHaveLength(1)
      expect(ids[0]).toMatch(/^[0-9a-f]{64}$/)
      return ids[0] as string
    } finally {
      await registrarDb.end()
    }
  }

  /** The tenant as an operator runs it in a verifier pod (`kubectl exec`): its tenant.conf and client certificate. */
  function tenant(verifierPod: Pod, registrarTlsPort: number) {
    const certStore = join(ctx.dir, 'ek-cert-store')
    mkdirSync(certStore, { recursive: true })
    for (const pem of swtpmLocalCaCertificates()) copyFileSync(pem, join(certStore, basename(pem)))
    return (verifierPort: number, ...args: string[]) =>
      runKeylime(['tenant', ...args], {
        ...verifierPod.env,
        KEYLIME_TENANT_VERIFIER_PORT: String(verifierPort),
        KEYLIME_TENANT_REGISTRAR_PORT: String(registrarTlsPort),
        KEYLIME_TENANT_TPM_CERT_STORE: certStore,
      })
  }

  return { ctx, startRegistrar, startVerifiers, agentPod, registeredAgent, tenant }
}

describe('pods as processes (overlay demo)', () => {
  const {
    ctx,
    startRegistrar,
    startVerifiers,
    agentPod,
    registeredAgent,
    tenant: tenantIn,
  } = overlayPods('demo')

  it('registrar, two verifier replicas and the agent start from their manifests; the agent is attested through both', async () => {
    expect(ctx.secrets.has('keylime-tls')).toBe(true)
    const { ports, child: registrarChild } = await startRegistrar()
    // short leases so the takeover below is quick; the manifests' 30 s works the same way, only slower
    const replicas = await startVerifiers(ports.registrarTls, { KEYLIME_VERIFIER_LEASE_SECONDS: '6' })
    const agentPort = await freeLocalPort()
    const agentMetrics = await freeLocalPort()
    const agent = agentPod('keylime-agent')

    // readiness as the kubelet asks it, on each pod's probe port
    await waitFor('registrar ready', 60, () => ready(ports.metrics, registrarChild))
    for (const r of replicas) await waitFor('verifier ready', 60, () => ready(r.metrics, r.child))
    const agentChild = run(
      agent,
      {
        KEYLIME_AGENT_IP: '127.0.0.1',
        KEYLIME_AGENT_PORT: String(agentPort),
        KEYLIME_AGENT_CONTACT_PORT: String(agentPort),
        KEYLIME_AGENT_REGISTRAR_PORT: String(ports.registrar),
        KEYLIME_AGENT_METRICS_IP: '127.0.0.1',
        KEYLIME_AGENT_METRICS_PORT: String(agentMetrics),
        // root in CI gets the real tmpfs; elsewhere only a disk folder is possible
        KEYLIME_AGENT_SECURE_DIR_ALLOW_DISK: String(process.geteuid?.() !== 0),
      },
      ctx.bin,
    )
    await waitFor('agent ready', 90, () => ready(agentMetrics, agentChild))
    expect(agent.env.KEYLIME_AGENT_CONTACT_IP).toBe('127.0.0.1')

    // the agent registered under hash_ek: its id is the one registrar row
    const uuid = await registeredAgent()
    const tenant = tenantIn(replicas[0]?.pod as Pod, ports.registrarTls)
    const [first, second] = replicas as [(typeof replicas)[0], (typeof replicas)[0]]
    const add = await tenant(
      first.port,
      '-c',
      'add',
      '-u',
      uuid,
      '--tpm_policy',
      `{"15":["${'0'.repeat(64)}"]}`,
    )
    expect(add.err).toMatch(/identity quote verified/)
    expect(add.code).toBe(0)
    const status = async (port: number) => {
      const s = await tenant(port, '-c', 'cvstatus', '-u', uuid, '--json')
      return JSON.parse(s.out)[uuid] as { attestation_count: number; operational_state: number }
    }
    // read through the other replica: the database they share
    const attested = await waitFor('attested', 60, async () => {
      const s = await status(second.port)
      return s.attestation_count >= 2 && s.operational_state === 3 ? s : undefined
    })

    // the replica holding the lease stops (SIGTERM releases it); the other takes the agent over and attests on
    const verifierDb = new pg.Client({ connectionString: ctx.databases.verifier })
    await verifierDb.connect()
    cleanups.push(() => verifierDb.end())
    const holder = async () =>
      String((await verifierDb.query('select lease_holder from verifiermain')).rows[0]?.lease_holder ?? '')
    const before = await holder()
    const holding = replicas.find((r) => before.includes(`:${r.port}#`))
    expect(holding, before).toBeDefined()
    const other = holding === first ? second : first
    holding?.child.kill('SIGTERM')
    await new Promise((r) => holding?.child.once('exit', r))
    const after = await waitFor('taken over', 60, async () => {
      const h = await holder()
      return h.includes(`:${other.port}#`) ? h : undefined
    })
    expect(after).not.toBe(before)
    await waitFor('attested on', 60, async () => {
      const s = await status(other.port)
      return s.attestation_count >= attested.attestation_count + 2 && s.operational_state === 3
        ? true
        : undefined
    })
    // and Prometheus, scraping that pod's probe port as its annotations say, sees the passes counted there
    const scrape = await request(`http://127.0.0.1:${other.metrics}/metrics`, { reset: true })
    const text = await scrape.body.text()
    const passes = /^keylime_verifier_attestations_total\{result="pass",event_id=""\} (\d+)$/m.exec(text)
    expect(Number(passes?.[1])).toBeGreaterThanOrEqual(2)
  }, 240_000)
})

/**
 * The keylime-verifier Service as a round-robin HTTPS forwarder (request i to replica i mod n), with the verifiers'
 * certificate as a TLS-passthrough Service would present it; records which replica answered what.
 */
async function roundRobinService(tls: Env, ports: number[]) {
  const served: { replica: number; method: string; path: string; status: number }[] = []
  const upstream = new Agent({ connect: { ca: tls['cacert.crt'], checkServerIdentity: () => undefined } })
  let next = 0
  const server = createServer(
    { cert: tls['server-cert.crt'], key: tls['server-private.pem'] },
    (req, res) => {
      const replica = next++ % ports.length
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        const headers: Record<string, string> = {}
        for (const [k, v] of Object.entries(req.headers))
          if (typeof v === 'string' && k !== 'host' && k !== 'connection') headers[k] = v
        const method = req.method ?? 'GET'
        const path = req.url ?? '/'
        upstream
          .request({
            origin: `https://127.0.0.1:${ports[replica]}`,
            path,
            method: method as 'GET',
            headers,
            ...(chunks.length > 0 ? { body: Buffer.concat(chunks) } : {}),
          })
          .then(async (r) => {
            const body = Buffer.from(await r.body.arrayBuffer())
            served.push({ replica, method, path, status: r.statusCode })
            const out: Record<string, string | string[]> = {}
            for (const [k, v] of Object.entries(r.headers))
              if (v !== undefined && k !== 'transfer-encoding' && k !== 'connection') out[k] = v
            res.writeHead(r.statusCode, out).end(body)
          })
          .catch((err: Error) => {
            served.push({ replica, method, path, status: 502 })
            res.writeHead(502).end(err.message)
          })
      })
    },
  )
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()))
  cleanups.push(async () => {
    await new Promise((r) => server.close(r))
    await upstream.close()
  })
  const address = server.address()
  return { port: typeof address === 'object' && address ? address.port : 0, served }
}

describe('pods as processes (overlay push)', () => {
  const {
    ctx,
    startRegistrar,
    startVerifiers,
    agentPod,
    registeredAgent,
    tenant: tenantIn,
  } = overlayPods('push')

  it('registrar, two push verifier replicas behind their Service and the push agent start from their manifests; every attestation passes, spread over both', async () => {
    const { ports, child: registrarChild } = await startRegistrar()
    // quote_interval 1 s so that a few attestations take seconds, as in the other push tests
    const replicas = await startVerifiers(ports.registrarTls, { KEYLIME_VERIFIER_QUOTE_INTERVAL: '1' })
    expect(replicas).toHaveLength(2)
    for (const r of replicas) expect(r.pod.env.KEYLIME_VERIFIER_MODE).toBe('push')
    const service = await roundRobinService(
      ctx.secrets.get('keylime-tls') as Env,
      replicas.map((r) => r.port),
    )
    const agent = agentPod('keylime-push-agent')
    // the manifest's verifier_url names the Service on 8881; locally the Service is the forwarder's port
    const conf = readFileSync(
      join(agent.mounts.find(([p]) => p === '/etc/keylime')?.[1] as string, 'push-agent.conf'),
      'utf8',
    )
    expect(conf).toMatch(/^verifier_url = "https:\/\/127\.0\.0\.1:8881"$/m)

    await waitFor('registrar ready', 60, () => ready(ports.metrics, registrarChild))
    for (const r of replicas) await waitFor('verifier ready', 60, () => ready(r.metrics, r.child))
    const agentChild = run(
      agent,
      {
        KEYLIME_AGENT_VERIFIER_URL: `https://127.0.0.1:${service.port}`,
        KEYLIME_AGENT_REGISTRAR_PORT: String(ports.registrar),
      },
      ctx.bin,
    )
    const uuid = await waitFor('push agent registered', 90, async () => {
      if (agentChild.exitCode !== null) throw new Error(`push agent exited with ${agentChild.exitCode}`)
      return registeredAgent().catch(() => undefined)
    })

    const tenant = tenantIn(replicas[0]?.pod as Pod, ports.registrarTls)
    const add = await tenant(
      replicas[0]?.port as number,
      '-c',
      'add',
      '--push-model',
      '-u',
      uuid,
      '--tpm_policy',
      `{"15":["${'0'.repeat(64)}"]}`,
    )
    expect(add.code, add.err).toBe(0)
    const enrolledAt = service.served.length
    // read through the other replica: the database they share
    const status = await waitFor('attested', 60, async () => {
      const s = await tenant(
        replicas[1]?.port as number,
        '-c',
        'cvstatus',
        '--push-model',
        '-u',
        uuid,
        '--json',
      )
      const st = JSON.parse(s.out)[uuid] as { attestation_count: number; attestation_status: string }
      return st.attestation_count >= 4 ? st : undefined
    })
    expect(status.attestation_status).toBe('PASS')
    expect(agentChild.exitCode).toBeNull()
    // both replicas answered the agent, and evidence was accepted by the replica that had not created the attestation
    const since = service.served.slice(enrolledAt)
    expect(new Set(since.filter((s) => s.status < 300).map((s) => s.replica))).toEqual(new Set([0, 1]))
    const crossed = since.filter((s, i) => {
      const created = since[i - 1]
      return (
        s.method === 'PATCH' &&
        s.path.includes('/attestations/') &&
        s.status === 202 &&
        created?.method === 'POST' &&
        created.status === 201 &&
        created.replica !== s.replica
      )
    })
    expect(crossed.length).toBeGreaterThanOrEqual(3)
    // once attesting, nothing the agent sent was refused
    const firstAccepted = since.findIndex((s) => s.status === 202)
    expect(since.slice(firstAccepted).filter((s) => s.status >= 400)).toEqual([])
  }, 180_000)
})
