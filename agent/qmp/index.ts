export { QmpClient, QmpError, type QmpEvent, type QmpGreeting, type QmpConnectOptions, type ExecuteOptions, type EventWaiter } from './client.js';
export * from './commands.js';
