/**
 * A generated grpc-js handler interface as promise-returning functions over plain requests: the
 * services are written this way and adapted to callbacks once, in the server.
 */
export type AsyncImpl<H> = {
  [K in keyof H]: H[K] extends (call: infer C, cb: infer CB) => void
    ? C extends { request: infer Req }
      ? CB extends (e: never, value?: infer Res) => void
        ? (req: Req) => Promise<NonNullable<Res>>
        : never
      : never
    : never;
};
