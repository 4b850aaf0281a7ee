/**
 * The Kubernetes Pod Security Standards (kubernetes.io/docs/concepts/security/pod-security-standards,
 * policy version 1.30) as checks over a PodSpec: `baseline` and `restricted`. Returns the
 * violations; an empty list means the pod is admitted at that level.
 */

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const objOf = (v: unknown): Obj => (isObj(v) ? v : {});
const listOf = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);

const BASELINE_CAPS = new Set([
  'AUDIT_WRITE', 'CHOWN', 'DAC_OVERRIDE', 'FOWNER', 'FSETID', 'KILL', 'MKNOD', 'NET_BIND_SERVICE',
  'SETFCAP', 'SETGID', 'SETPCAP', 'SETUID', 'SYS_CHROOT',
]);
const SAFE_SYSCTLS = new Set([
  'kernel.shm_rmid_forced', 'net.ipv4.ip_local_port_range', 'net.ipv4.ip_unprivileged_port_start',
  'net.ipv4.tcp_syncookies', 'net.ipv4.ping_group_range', 'net.ipv4.ip_local_reserved_ports',
  'net.ipv4.tcp_keepalive_time', 'net.ipv4.tcp_fin_timeout', 'net.ipv4.tcp_keepalive_intvl', 'net.ipv4.tcp_keepalive_probes',
]);
const SELINUX_TYPES = new Set(['', 'container_t', 'container_init_t', 'container_kvm_t', 'container_engine_t']);
const RESTRICTED_VOLUMES = new Set(['configMap', 'csi', 'downwardAPI', 'emptyDir', 'ephemeral', 'persistentVolumeClaim', 'projected', 'secret']);

export type PssLevel = 'baseline' | 'restricted';

export function podSecurityViolations(podSpec: unknown, level: PssLevel): string[] {
  const spec = objOf(podSpec);
  const v: string[] = [];
  const podSc = objOf(spec.securityContext);
  const containers = [
    ...listOf(spec.initContainers).map((c) => ({ c: objOf(c), kind: 'initContainer' })),
    ...listOf(spec.containers).map((c) => ({ c: objOf(c), kind: 'container' })),
    ...listOf(spec.ephemeralContainers).map((c) => ({ c: objOf(c), kind: 'ephemeralContainer' })),
  ];

  // ---- baseline
  for (const k of ['hostNetwork', 'hostPID', 'hostIPC']) if (spec[k] === true) v.push(`${k} is true`);
  if (objOf(podSc.windowsOptions).hostProcess === true) v.push('pod windowsOptions.hostProcess');
  for (const vol of listOf(spec.volumes).map(objOf)) if ('hostPath' in vol) v.push(`volume ${String(vol.name)} is a hostPath`);
  const checkSeLinux = (o: unknown, where: string): void => {
    const se = objOf(o);
    if (se.type !== undefined && !SELINUX_TYPES.has(String(se.type))) v.push(`${where} seLinuxOptions.type ${String(se.type)}`);
    if (se.user !== undefined || se.role !== undefined) v.push(`${where} seLinuxOptions.user/role set`);
  };
  checkSeLinux(podSc.seLinuxOptions, 'pod');
  if (objOf(podSc.seccompProfile).type === 'Unconfined') v.push('pod seccompProfile Unconfined');
  if (objOf(podSc.appArmorProfile).type === 'Unconfined') v.push('pod appArmorProfile Unconfined');
  for (const s of listOf(podSc.sysctls).map(objOf)) if (!SAFE_SYSCTLS.has(String(s.name))) v.push(`unsafe sysctl ${String(s.name)}`);
  for (const { c, kind } of containers) {
    const name = `${kind} ${String(c.name)}`;
    const sc = objOf(c.securityContext);
    if (sc.privileged === true) v.push(`${name} is privileged`);
    if (objOf(sc.windowsOptions).hostProcess === true) v.push(`${name} windowsOptions.hostProcess`);
    for (const add of listOf(objOf(sc.capabilities).add)) if (!BASELINE_CAPS.has(String(add))) v.push(`${name} adds capability ${String(add)}`);
    for (const p of listOf(c.ports).map(objOf)) if (p.hostPort !== undefined && p.hostPort !== 0) v.push(`${name} uses hostPort ${String(p.hostPort)}`);
    checkSeLinux(sc.seLinuxOptions, name);
    if (sc.procMount !== undefined && sc.procMount !== 'Default') v.push(`${name} procMount ${String(sc.procMount)}`);
    if (objOf(sc.seccompProfile).type === 'Unconfined') v.push(`${name} seccompProfile Unconfined`);
    if (objOf(sc.appArmorProfile).type === 'Unconfined') v.push(`${name} appArmorProfile Unconfined`);
  }
  if (level === 'baseline') return v;

  // ---- restricted
  for (const vol of listOf(spec.volumes).map(objOf)) {
    const type = Object.keys(vol).find((k) => k !== 'name');
    if (type && !RESTRICTED_VOLUMES.has(type)) v.push(`volume ${String(vol.name)} has restricted-forbidden type ${type}`);
  }
  const podSeccomp = objOf(podSc.seccompProfile).type;
  if (podSc.runAsUser === 0) v.push('pod runAsUser is 0');
  for (const { c, kind } of containers) {
    const name = `${kind} ${String(c.name)}`;
    const sc = objOf(c.securityContext);
    if (sc.allowPrivilegeEscalation !== false) v.push(`${name} allowPrivilegeEscalation is not false`);
    const nonRoot = sc.runAsNonRoot ?? podSc.runAsNonRoot;
    if (nonRoot !== true) v.push(`${name} runAsNonRoot is not true`);
    if (sc.runAsUser === 0) v.push(`${name} runAsUser is 0`);
    const seccomp = objOf(sc.seccompProfile).type ?? podSeccomp;
    if (seccomp !== 'RuntimeDefault' && seccomp !== 'Localhost') v.push(`${name} seccompProfile is not RuntimeDefault/Localhost`);
    const caps = objOf(sc.capabilities);
    if (!listOf(caps.drop).includes('ALL')) v.push(`${name} does not drop ALL capabilities`);
    for (const add of listOf(caps.add)) if (add !== 'NET_BIND_SERVICE') v.push(`${name} adds capability ${String(add)} (restricted)`);
  }
  return v;
}
