import { strict as assert } from 'node:assert';
import { LAUNCH_SCRIPT, hostCgroupNsPrefix, inPodLauncher, launcherCommand } from './launcher.js';

const qemu = ['qemu-system-x86_64', '-name', 'guest=vm1'];
const priv = ['setpriv', '--reuid=107', '--regid=107', '--clear-groups', '--inh-caps=-all', '--bounding-set=-all', '--no-new-privs', '--'];

describe('agent-core: launcher argv', () => {
  it('local mode: cgroups first (as root), then netns, then drop to uid/gid with no capabilities, then exec QEMU', () => {
    const argv = launcherCommand(qemu, { cgroupDirs: ['/sys/fs/cgroup/cpuset/p/vm1', '/sys/fs/cgroup/memory/p/vm1'], netns: '/run/netns/vm1', uid: 107, gid: 107 });
    assert.deepEqual(argv, [
      'sh', '-c', LAUNCH_SCRIPT, 'podvirt-launch', '2', '/sys/fs/cgroup/cpuset/p/vm1', '/sys/fs/cgroup/memory/p/vm1',
      'nsenter', '--net=/run/netns/vm1', '--',
      ...priv,
      ...qemu,
    ]);
    assert.match(LAUNCH_SCRIPT, /exec "\$@"$/, 'the shell must exec, not stay resident');
  });

  it('without a netns there is no nsenter', () => {
    const argv = launcherCommand(qemu, { cgroupDirs: [], uid: 1000, gid: 1000 });
    assert.deepEqual(argv.slice(4, 6), ['0', 'setpriv']);
  });

  it('refuses root', () => {
    assert.throws(() => launcherCommand(qemu, { cgroupDirs: [], uid: 0, gid: 0 }), /non-root/);
  });

  it('in-cluster: enters every namespace of a pod process and leaves QEMU to the pod init', () => {
    const argv = inPodLauncher(qemu, 4242, { cgroupDirs: ['/sys/fs/cgroup/kubepods/pod-x/c1'], uid: 107, gid: 107 });
    assert.deepEqual(argv, [
      'sh', '-c', LAUNCH_SCRIPT, 'podvirt-launch', '1', '/sys/fs/cgroup/kubepods/pod-x/c1',
      'nsenter', '--target=4242', '--net', '--ipc', '--uts', '--mount', '--pid', '--cgroup', '--',
      'sh', '-c', '"$@" </dev/null &', 'podvirt-bg',
      ...priv,
      ...qemu,
    ]);
    assert.throws(() => inPodLauncher(qemu, 1, { cgroupDirs: [], uid: 107, gid: 107 }), /bad target pid/);
  });

  it('an agent in a cgroup namespace of its own moves QEMU from the host\'s', () => {
    assert.deepEqual(hostCgroupNsPrefix('cgroup:[2]', 'cgroup:[1]', '/proc/1/ns/cgroup'), ['nsenter', '--cgroup=/proc/1/ns/cgroup', '--']);
    assert.deepEqual(hostCgroupNsPrefix('cgroup:[1]', 'cgroup:[1]', '/proc/1/ns/cgroup'), []);
    assert.deepEqual(hostCgroupNsPrefix(undefined, 'cgroup:[1]', '/proc/1/ns/cgroup'), [], 'unknown: stay');
  });
});
