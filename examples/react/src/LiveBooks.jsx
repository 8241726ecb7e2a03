// A component showing catalogue changes live; drop it into any React app (Vite, Next.js, ...).
import { useLiveEvents } from "./useLiveEvents.js";

export function LiveBooks({ baseUrl, token, reload }) {
  const { events, status } = useLiveEvents({ baseUrl, token, topics: ["books"], onResync: reload });
  return (
    <section>
      <p>Live: {status.state}</p>
      <ul>
        {events.map((event) => (
          <li key={`${event.epoch}:${event.id}`}>
            {event.type}: {event.data?.title ?? event.data?.id}
          </li>
        ))}
      </ul>
    </section>
  );
}
