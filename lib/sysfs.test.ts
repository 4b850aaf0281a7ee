import { strict as assert } from 'node:assert';
import { formatCpuList, parseCpuList } from './sysfs.js';
import { under } from './host-roots.js';

describe('lib: cpu lists', () => {
  const cases: Array<[string, number[], string]> = [
    ['0', [0], '0'],
    ['0-3', [0, 1, 2, 3], '0-3'],
    ['0-1,4,6-7', [0, 1, 4, 6, 7], '0-1,4,6-7'],
    ['3,1,2', [1, 2, 3], '1-3'],
    ['', [], ''],
  ];
  for (const [text, cpus, canonical] of cases) {
    it(`parses "${text}" and formats it back canonically`, () => {
      assert.deepEqual(parseCpuList(text), cpus);
      assert.equal(formatCpuList(cpus), canonical);
    });
  }
  for (const bad of ['a', '3-1', '1--2', '-1']) {
    it(`rejects "${bad}"`, () => assert.throws(() => parseCpuList(bad), /bad cpu/));
  }
});

describe('lib: host roots', () => {
  it('joins paths under a root', () => assert.equal(under('/tmp/x', '/dev/kvm'), '/tmp/x/dev/kvm'));
  it('refuses to escape the root', () => assert.throws(() => under('/tmp/x', '../etc/passwd'), /escapes/));
});
