import * as net from 'node:net';

/**
 * Types one line into a guest's serial console socket and keeps the connection open until the
 * guest's tty has echoed it (or `echoTimeoutMs` passes). QEMU's socket chardev drops what it has
 * not read yet when the client hangs up, and a TCG guest on a loaded box drains its UART slowly:
 * closing after a fixed delay cut commands short ("diskpatt").
 */
export async function typeLine(socketPath: string, line: string, echoTimeoutMs = 15_000): Promise<void> {
  const tail = line.slice(-24);
  await new Promise<void>((resolve, reject) => {
    let seen = '';
    let timer: NodeJS.Timeout | undefined;
    const s = net.createConnection(socketPath, () => {
      s.write(`${line}\n`);
      timer = setTimeout(done, echoTimeoutMs);
    });
    function done(): void {
      clearTimeout(timer);
      s.destroy();
      resolve();
    }
    s.on('data', (d: Buffer) => {
      seen = (seen + d.toString('latin1')).slice(-4096);
      if (seen.includes(tail)) done();
    });
    s.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}
