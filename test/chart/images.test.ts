import { strict as assert } from 'node:assert';
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { parseAllDocuments } from 'yaml';
import { podVmInput } from '../../agent/spec/index.js';
import { PROJECT_ROOT } from '../../lib/project-root.js';
import { render } from './render-chart.js';

// The Dockerfiles cannot be built here (no container engine); these checks keep them in step
// with what the chart and the examples expect of the images.
const dockerfile = (name: string): string => readFileSync(path.join(PROJECT_ROOT, 'hack', 'image', name), 'utf8');

describe('hack/image: the images the chart and examples name', () => {
  it('podvirt image: a Node release hack/test.sh tests on, `podvirt` on PATH as the chart invokes it, the CNI build output inside', () => {
    const df = dockerfile('podvirt.Dockerfile');
    // Both stages on the same exact Node, one of those hack/setup.d/30-node-matrix.sh installs
    // for the compatibility runs, on the Debian release whose QEMU the tests run.
    const matrix = readFileSync(path.join(PROJECT_ROOT, 'hack', 'setup.d', '30-node-matrix.sh'), 'utf8');
    const tested = [...matrix.matchAll(/^ {2}"(\d+\.\d+\.\d+) sha512-/gm)].map((m) => m[1]);
    const froms = [...df.matchAll(/^FROM node:(\S+)-bookworm-slim\b/gm)].map((m) => m[1]);
    assert.equal(froms.length, 2, 'build and runtime stages');
    assert.equal(new Set(froms).size, 1, 'one Node for both stages');
    assert.ok(tested.includes(froms[0]), `node:${froms[0]} is not one of the tested releases ${tested.join(', ')}`);
    assert.match(df, /ln -s \/opt\/podvirt\/dist\/bin\/podvirt\.js \/usr\/local\/bin\/podvirt/);
    assert.match(df, /COPY --from=build \/src\/dist \.\/dist/, 'dist/cni is what the agent installs on the host');
    const ds = render({}).all.find((m) => m.kind === 'DaemonSet') as unknown as { spec: { template: { spec: { containers: { name: string; command?: string[] }[] } } } };
    assert.deepEqual(ds.spec.template.spec.containers.find((c) => c.name === 'agent')?.command, ['podvirt']);
    // Host tools the agent's components run.
    for (const pkg of ['qemu-utils', 'fuse3', 'util-linux', 'e2fsprogs', 'xfsprogs', 'iproute2']) assert.match(df, new RegExp(`\\b${pkg}\\b`));
  });

  it('launcher image: QEMU, setpriv, uid 107, and the guest files at the paths the example spec boots', () => {
    const df = dockerfile('launcher.Dockerfile');
    assert.match(df, /qemu-system-x86/);
    assert.match(df, /util-linux/, 'setpriv drops QEMU to the pod uid');
    assert.match(df, /^USER 107:107$/m);
    const pod = parseAllDocuments(readFileSync(path.join(PROJECT_ROOT, 'examples', 'vm-pod.yaml'), 'utf8'))[0]?.toJS() as unknown;
    const spec = podVmInput(pod).spec;
    const copy = /^COPY (\S+) (\S+) (\S+)\/$/m.exec(df);
    assert.ok(copy, 'one COPY of the guest kernel and initramfs');
    assert.equal(`${copy[3]}/${path.basename(copy[1] as string)}`, spec.kernel);
    assert.equal(`${copy[3]}/${path.basename(copy[2] as string)}`, spec.initrd);
    // hack/setup.sh builds the guest; the COPY sources must be what it produces.
    for (const src of [copy[1], copy[2]]) assert.ok(existsSync(path.join(PROJECT_ROOT, src as string)), `${src} (built by hack/setup.sh)`);
  });
});
