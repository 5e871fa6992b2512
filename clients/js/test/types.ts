// Compiled with `tsc -p test` (no output): the event types narrow on `t`, and
// the emitter knows its event names and their listeners' arguments.
import { OtakoClient, type OtakoEvent, type Message } from "../src/otako.js";

declare const client: OtakoClient;

export async function narrowing(): Promise<void> {
  for await (const ev of client.events()) {
    switch (ev.t) {
      case "EVENT_MESSAGE_CREATE":
      case "EVENT_MESSAGE_UPDATE": {
        const m: Message = ev.d;
        void m.author.username;
        break;
      }
      case "EVENT_MESSAGE_DELETE":
        // @ts-expect-error a delete carries ids only
        void ev.d.content;
        break;
      case "EVENT_CHANNEL_MEMBER_ADD":
      case "EVENT_CHANNEL_MEMBER_REMOVE":
        void ev.d.user_id;
        break;
      case "READY": {
        const resumed: boolean = ev.d.resumed;
        const resync: boolean = ev.d.resync;
        void [resumed, resync, ev.d.cursor?.length];
        break;
      }
      default: {
        const never: never = ev;
        void never;
      }
    }
  }
}

export function emitter(): void {
  client.on("message_create", (m, ev) => void [m.content, ev.s]);
  client.on("state", (s) => {
    // @ts-expect-error not a state
    if (s === "open") return;
  });
  client.on("stopped", (e) => void e.kind);
  // @ts-expect-error no such event
  client.on("message_created", () => {});
  const all: OtakoEvent[] = [];
  void all;
}
