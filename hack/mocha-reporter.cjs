'use strict';
// Spec output plus the plain closing line CI reads: "N passed, N failed, N skipped".
const Mocha = require('mocha');
const { EVENT_RUN_END, EVENT_TEST_PENDING } = Mocha.Runner.constants;

class PodvirtReporter extends Mocha.reporters.Spec {
  constructor(runner, options) {
    super(runner, options);
    const skipped = [];
    runner.on(EVENT_TEST_PENDING, (test) => {
      const why = test.skipReason || (test.ctx && test.ctx.skipReason);
      skipped.push(`${test.fullTitle()}${why ? ` (${why})` : ''}`);
    });
    runner.once(EVENT_RUN_END, () => {
      const s = this.stats;
      if (skipped.length > 0) {
        process.stdout.write(`\nskipped tests:\n${skipped.map((t) => `  - ${t}`).join('\n')}\n`);
      }
      process.stdout.write(`\n${s.passes} passed, ${s.failures} failed, ${s.pending} skipped\n`);
    });
  }
}

module.exports = PodvirtReporter;
