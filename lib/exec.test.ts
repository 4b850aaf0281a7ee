import { strict as assert } from 'node:assert';
import { exec, ExecError, execText } from './exec.js';

describe('lib: exec', () => {
  it('returns stdout of a real process and passes stdin', async () => {
    assert.equal(await execText('cat', [], { input: 'hello' }), 'hello');
  });
  it('throws ExecError with exit code and stderr on failure', async () => {
    await assert.rejects(exec('sh', ['-c', 'echo boom >&2; exit 3']), (e: unknown) => {
      assert.ok(e instanceof ExecError);
      assert.equal(e.result.code, 3);
      assert.match(e.message, /exit 3: boom/);
      return true;
    });
  });
  it('reports a missing binary as ExecError', async () => {
    await assert.rejects(exec('/nonexistent/binary', []), ExecError);
  });
  it('kills a process that outlives its timeout', async () => {
    const r = await exec('sleep', ['10'], { timeoutMs: 100, allowFailure: true });
    assert.equal(r.signal, 'SIGKILL');
  });
});
