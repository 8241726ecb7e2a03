// A minimal page over the Library API: sign in, list the catalogue, and follow its changes live.
//
// The service's address comes from `?api=https://library.example.com` (default: the page's own origin, when the
// page is served by the same host). A page on another origin needs that origin in the service's
// BACKEND_CORS_ORIGINS (REST calls) and WS_ALLOWED_ORIGINS (the WebSocket handshake).
import { useCallback, useEffect, useState } from "react";
import { LiveBooks } from "./LiveBooks.jsx";

const API_BASE = new URLSearchParams(window.location.search).get("api") || window.location.origin;

async function logIn(email, password) {
  const response = await fetch(`${API_BASE}/api/v1/auth/login`, {
    method: "POST",
    body: new URLSearchParams({ username: email, password }),
  });
  if (!response.ok) throw new Error(`sign-in refused (${response.status})`);
  return (await response.json()).access_token;
}

function SignIn({ onToken }) {
  const [error, setError] = useState("");
  const submit = async (event) => {
    event.preventDefault();
    const form = new FormData(event.currentTarget);
    try {
      onToken(await logIn(form.get("email"), form.get("password")));
    } catch (exc) {
      setError(String(exc.message || exc));
    }
  };
  return (
    <form onSubmit={submit}>
      <input name="email" type="email" placeholder="e-mail" aria-label="e-mail" required />
      <input name="password" type="password" placeholder="password" aria-label="password" required />
      <button type="submit">Sign in</button>
      {error && <p role="alert">{error}</p>}
    </form>
  );
}

function Catalogue({ token }) {
  const [books, setBooks] = useState([]);
  const reload = useCallback(async () => {
    const response = await fetch(`${API_BASE}/api/v1/books?limit=20`, {
      headers: { Authorization: `Bearer ${token}` },
    });
    if (response.ok) setBooks((await response.json()).items);
  }, [token]);
  useEffect(() => {
    reload();
  }, [reload]);
  return (
    <main>
      <h1>Catalogue</h1>
      <ul data-testid="catalogue">
        {books.map((book) => (
          <li key={book.id}>{book.title}</li>
        ))}
      </ul>
      <h2>Live changes</h2>
      <LiveBooks baseUrl={API_BASE} token={token} reload={reload} />
    </main>
  );
}

export function App() {
  const [token, setToken] = useState(null);
  return token ? <Catalogue token={token} /> : <SignIn onToken={setToken} />;
}
