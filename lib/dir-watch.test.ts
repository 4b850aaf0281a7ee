import { strict as assert } from 'node:assert';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { DirWatcher } from './dir-watch.js';

type Ev = [string, string | null];
const waiters = new Set<() => void>();

/** Resolves when `pred` holds, re-checked on every watcher event; rejects after 3 s naming what was expected. */
function eventWhere(events: Ev[], pred: (e: Ev) => boolean, what: string) {
  return new Promise<void>((resolve, reject) => {
    const check = () => {
      if (!events.some(pred)) return;
      clearTimeout(t);
      waiters.delete(check);
      resolve();
    };
    const t = setTimeout(() => {
      waiters.delete(check);
      reject(new Error(`no event: ${what}; got ${JSON.stringify(events)}`));
    }, 3000);
    waiters.add(check);
    check();
  });
}

describe('lib: DirWatcher', () => {
  let root: string;
  let w: DirWatcher | undefined;
  const events: Ev[] = [];
  const push = (d: string, n: string | null) => {
    events.push([d, n]);
    for (const f of [...waiters]) f();
  };
  beforeEach(() => {
    root = mkdtempSync(path.join(tmpdir(), 'pvt-dw-'));
    events.length = 0;
  });
  afterEach(() => {
    w?.close();
    rmSync(root, { recursive: true, force: true });
  });

  it('reports entries created and removed in a watched dir', async () => {
    w = new DirWatcher([root], push);
    writeFileSync(path.join(root, 'kvm'), '');
    await eventWhere(events, ([d, n]) => d === root && n === 'kvm', 'kvm created');
    events.length = 0;
    rmSync(path.join(root, 'kvm'));
    await eventWhere(events, ([, n]) => n === 'kvm', 'kvm removed');
  });

  it('waits for a missing dir (two levels deep) and watches it once it appears', async () => {
    const deep = path.join(root, 'a', 'b');
    w = new DirWatcher([deep], push);
    assert.deepEqual(w.watching, []);
    mkdirSync(deep, { recursive: true });
    await eventWhere(events, ([d, n]) => d === deep && n === null, 'dir appeared');
    assert.deepEqual(w.watching, [deep]);
    writeFileSync(path.join(deep, 'tun'), '');
    await eventWhere(events, ([d, n]) => d === deep && n === 'tun', 'tun created');
  });

  it('survives the dir being removed and re-created', async () => {
    const dir = path.join(root, 'plugins');
    mkdirSync(dir);
    w = new DirWatcher([dir], push);
    rmSync(dir, { recursive: true });
    await eventWhere(events, () => w!.watching.length === 0, 'watch dropped');
    mkdirSync(dir);
    await eventWhere(events, () => w!.watching.length === 1, 'watch re-armed');
    events.length = 0;
    writeFileSync(path.join(dir, 'kubelet.sock'), '');
    await eventWhere(events, ([d, n]) => d === dir && n === 'kubelet.sock', 'event after re-creation');
  });
});
