// A component showing catalogue changes live; drop it into any React app (Vite, Next.js, ...).
import { useLiveEvents } from "./useLiveEvents.js";

export function LiveBooks({ baseUrl, token, reload }) {
  const { events, status } = useLiveEvents({ baseUrl, token, topics: ["books"], onResync: reload });
  return (
    <section>
      <p data-testid="live-status">Live: {status.state}</p>
      <ul data-testid="live-events">
        {events.map((event) => (
          <li key={`${event.epoch}:${event.id}`}>
            {event.type}: {event.data?.title ?? event.data?.id}
          </li>
        ))}
      </ul>
    </section>
  );
}
