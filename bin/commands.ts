import { PACKAGE_VERSION } from '../lib/project-root.js';

export type CommandMain = (argv: string[]) => Promise<number>;

export interface Command {
  summary: string;
  load: () => Promise<CommandMain>;
}

const version: CommandMain = async () => {
  process.stdout.write(`podvirt ${PACKAGE_VERSION}\n`);
  return 0;
};

/**
 * The command table. Each component adds its entry pointing at its own `main`
 * (a function taking the arguments after the command name and returning an exit code).
 */
export const COMMANDS: Record<string, Command> = {
  version: { summary: 'print the version', load: async () => version },
  'device-plugin': {
    summary: 'kubelet device plugin for devices.kubevirt.io/{kvm,tun,vhost-net,vhost-vsock}, VFIO and mdev resources',
    load: async () => (await import('../plugins/main.js')).main,
  },
  'cni-server': {
    summary: 'CNI server behind the podvirt-cni shim (unix socket, default /run/podvirt/cni.sock)',
    load: async () => (await import('../cni/main.js')).main,
  },
  'cni-activate': {
    summary: "open a migration target's tap at switch-over (--netns PATH --ifname NAME)",
    load: async () => (await import('../cni/activate-main.js')).main,
  },
  csi: {
    summary: 'CSI driver for node-local VM disks (--endpoint unix:///PATH --node-id ID --state-dir DIR)',
    load: async () => (await import('../csi/main.js')).main,
  },
  run: {
    summary: 'local mode: start the VM described by a Pod manifest (FILE)',
    load: async () => (await import('../agent/local/main.js')).runMain,
  },
  ps: { summary: 'local mode: list running VM pods', load: async () => (await import('../agent/local/main.js')).psMain },
  status: {
    summary: 'local mode: show a VM pod (--json: the status object)',
    load: async () => (await import('../agent/local/main.js')).statusMain,
  },
  console: {
    summary: "local mode: attach to a VM's serial console (Ctrl-] detaches)",
    load: async () => (await import('../agent/local/main.js')).consoleMain,
  },
  stop: {
    summary: 'local mode: stop a VM pod and clean up (--delete-volumes also deletes its claims)',
    load: async () => (await import('../agent/local/main.js')).stopMain,
  },
  migrate: {
    summary: 'local mode: live-migrate a VM into a new local pod and follow it (--cancel stops it; --tls, tuning flags)',
    load: async () => (await import('../agent/migration/main.js')).main,
  },
  // agent/kube/main.ts runs the cluster agent and hands `--local` to agent/local/agent-main.ts.
  agent: {
    summary: 'node agent: in a cluster (DaemonSet); --local: the local-mode daemon that run/ps/status/stop talk to',
    load: async () => (await import('../agent/kube/main.js')).main,
  },
  'console-attach': {
    summary: "join stdin/stdout to a VM's serial console socket (used by kubectl podvirt console via exec)",
    load: async () => (await import('../agent/kube/console-attach.js')).main,
  },
};
