/** The kubelet device plugin API v1beta1, loaded once, typed by the generated code in proto/gen. */
import { loadProto } from '../lib/grpc-server.js';
import type { ProtoGrpcType } from '../proto/gen/deviceplugin/v1beta1/api.js';

export type { Device, Device__Output } from '../proto/gen/deviceplugin/v1beta1/v1beta1/Device.js';
export type { DevicePluginClient, DevicePluginHandlers } from '../proto/gen/deviceplugin/v1beta1/v1beta1/DevicePlugin.js';
export type { RegistrationClient, RegistrationHandlers } from '../proto/gen/deviceplugin/v1beta1/v1beta1/Registration.js';
export type { DevicePluginOptions, DevicePluginOptions__Output } from '../proto/gen/deviceplugin/v1beta1/v1beta1/DevicePluginOptions.js';
export type { RegisterRequest, RegisterRequest__Output } from '../proto/gen/deviceplugin/v1beta1/v1beta1/RegisterRequest.js';
export type { ListAndWatchResponse, ListAndWatchResponse__Output } from '../proto/gen/deviceplugin/v1beta1/v1beta1/ListAndWatchResponse.js';
export type { AllocateRequest, AllocateRequest__Output } from '../proto/gen/deviceplugin/v1beta1/v1beta1/AllocateRequest.js';
export type { AllocateResponse, AllocateResponse__Output } from '../proto/gen/deviceplugin/v1beta1/v1beta1/AllocateResponse.js';
export type {
  ContainerAllocateResponse,
  ContainerAllocateResponse__Output,
} from '../proto/gen/deviceplugin/v1beta1/v1beta1/ContainerAllocateResponse.js';
export type {
  PreferredAllocationRequest__Output,
  PreferredAllocationRequest,
} from '../proto/gen/deviceplugin/v1beta1/v1beta1/PreferredAllocationRequest.js';
export type {
  PreferredAllocationResponse,
  PreferredAllocationResponse__Output,
} from '../proto/gen/deviceplugin/v1beta1/v1beta1/PreferredAllocationResponse.js';
export type { Empty, Empty__Output } from '../proto/gen/deviceplugin/v1beta1/v1beta1/Empty.js';

let api: ProtoGrpcType['v1beta1'] | undefined;

/** The `v1beta1` package: `DevicePlugin` and `Registration` service constructors with their definitions. */
export function devicePluginApi(): ProtoGrpcType['v1beta1'] {
  api ??= (loadProto('deviceplugin/v1beta1/api.proto') as unknown as ProtoGrpcType).v1beta1;
  return api;
}
