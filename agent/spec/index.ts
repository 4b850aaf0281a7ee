export * from './vm-spec.js';
export * from './pod-facts.js';
export { quantityBytes, quantityWholeCpus } from './quantity.js';
