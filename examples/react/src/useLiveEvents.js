// A React hook over the shared live client: the events of some topics, kept across reconnections.
//
//   const { events, status } = useLiveEvents({ baseUrl: "https://library.example.com", token, topics: ["books"] });
//
// Positions are kept in sessionStorage, so a page reload resumes where it left off; on `resync` the hook calls
// `onResync` (reload the list from the REST API) and clears the events it held for that topic.
import { useEffect, useRef, useState } from "react";
import { LiveClient } from "../../live-client/liveClient.mjs";

const STORAGE_KEY = "library-api.live-positions";

export function useLiveEvents({ baseUrl, token, topics, clientId = "browser-tab", onResync = () => {}, keep = 100 }) {
  const [events, setEvents] = useState([]);
  const [status, setStatus] = useState({ state: "idle" });
  const resyncRef = useRef(onResync);
  resyncRef.current = onResync;
  const topicKey = topics.join(",");

  useEffect(() => {
    const saved = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || "{}");
    const client = new LiveClient({
      baseUrl,
      clientId,
      token,
      topics: topicKey.split(","),
      positions: saved,
      onEvent: (message) => {
        if (message.id == null) return;
        sessionStorage.setItem(STORAGE_KEY, JSON.stringify(Object.fromEntries(client.positions)));
        setEvents((current) => [...current.slice(-(keep - 1)), message]);
      },
      onResync: (data) => {
        setEvents((current) => current.filter((message) => message.topic !== data.topic));
        resyncRef.current(data);
      },
      onStatus: setStatus,
    }).start();
    return () => client.stop();
  }, [baseUrl, token, topicKey, clientId, keep]);

  return { events, status };
}
