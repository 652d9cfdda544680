// Type-checked by scripts/test-js.sh with `tsc --noEmit --strict`, once as Node resolves the
// package (node/ types) and once as a bundler does (bundler/ types): the README's usage, with
// the types a user gets, and misuse the types must refuse.
import { GCounter, HyperLogLog, PNCounter } from "tally-crdt";

const replica = "6f1c0a4e9d2b47a8b3c5d7e9f1a2b3c4";

const views = new GCounter();
const slot: bigint = views.increment(replica, 1n);
const value: bigint = views.value();
const text: string = views.valueString();
const json: string = views.toJSON();
const back: GCounter = GCounter.fromJSON(json);
back.merge(views);

const viewers = new PNCounter();
viewers.increment(replica, 2n);
viewers.decrement(replica, 3n);
const gauge: bigint = viewers.value();

const visitors = new HyperLogLog();
const finer = new HyperLogLog(14);
const changed: boolean = visitors.insert("203.0.113.7");
visitors.insertBytes(new Uint8Array([1, 2, 3]));
const estimate: bigint = visitors.estimate();
const wire: Uint8Array = visitors.toBytes();
HyperLogLog.fromBytes(wire).merge(HyperLogLog.fromJSON(visitors.toJSON()));

{
  using scoped = new GCounter(); // freed at the end of the block ([Symbol.dispose])
  scoped.increment(replica, 1n);
}

// @ts-expect-error amounts are bigint, not number
views.increment(replica, 1);
// @ts-expect-error a GCounter merges only GCounters
views.merge(viewers);
// @ts-expect-error value() is a bigint, not a number
const wrong: number = views.value();

export { slot, value, text, back, gauge, finer, changed, estimate, wrong };
