// The chat page: plain JavaScript on the modelence-trio client, no build step.
import { ClientChannel, callMethod, startWebsockets } from "/_modelence/modelence.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const name = params.get("name") ?? localStorage.getItem("chat-name") ?? "";
let room = params.get("room") ?? "lobby";
const RECENT = 50; // messages shown on entering a room, from the server's history
const STATUS = { connecting: "connecting", open: "connected", reconnecting: "reconnecting", unauthorized: "signed out", closed: "closed" };
const LOCK =
  '<svg class="lock" viewBox="0 0 16 16" aria-hidden="true"><path fill="currentColor" d="M4 7V5a4 4 0 0 1 8 0v2h1v8H3V7zm2 0h4V5a2 2 0 0 0-4 0z"/></svg>';

function show(message) {
  const item = document.createElement("li");
  const author = document.createElement("span");
  author.className = "author";
  author.textContent = message.author;
  item.append(author, document.createTextNode(message.text));
  $("messages").append(item);
  item.scrollIntoView({ block: "end" });
}

function showOnline({ count, members }) {
  $("online-title").textContent = `Online (${count})`;
  $("online").replaceChildren(
    ...(members ?? []).map(({ meta, connections }) => {
      const item = document.createElement("li");
      item.textContent = meta?.handle ?? "?";
      if (meta?.staff) item.className = "staff";
      if (connections > 1) item.title = `${connections} windows`;
      return item;
    }),
  );
}

const chat = new ClientChannel(
  "chat",
  (message, { id }) => {
    if (id === room) show(message);
  },
  { onPresence: (presence, { id }) => id === room && showOnline(presence) },
);

startWebsockets({
  channels: [chat],
  token: name || null,
  onStatusChange: (status) => {
    $("status").textContent = STATUS[status] ?? status;
    $("status").dataset.status = status;
  },
  onAuthError: () => {
    $("notice").textContent = "Your sign-in was refused: sign in again.";
  },
  onRecoveryFailed: (channel) => {
    if (channel === `chat:${room}`) $("notice").textContent = "Some messages sent while you were offline are missing.";
  },
});

async function enter(next) {
  if (next !== room) chat.leaveChannel(room).catch(() => {});
  room = next;
  showOnline({ count: 0, members: [] });
  $("messages").replaceChildren();
  $("notice").textContent = "";
  $("room-title").textContent = `#${room}`;
  for (const button of document.querySelectorAll("#rooms button")) {
    button.setAttribute("aria-current", String(button.dataset.room === room));
  }
  try {
    await chat.joinChannel(room, { last: RECENT }); // the room's recent messages come first
    $("room-title").dataset.joined = room;
  } catch (error) {
    if (room === next) $("notice").textContent = `You cannot join #${next}: ${error.message} (${error.code})`;
  }
}

$("send").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("text").value;
  try {
    await callMethod("chat.sendMessage", { room, text });
    $("text").value = "";
  } catch (error) {
    $("notice").textContent = error.message;
  }
});

$("signin").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem("chat-name", $("name").value);
  params.set("name", $("name").value);
  location.search = params.toString(); // a new name is a new connection
});

$("signout").addEventListener("click", () => {
  localStorage.removeItem("chat-name");
  params.delete("name");
  location.search = params.toString(); // another window can then pick another name
});

if (name) {
  $("signin").hidden = true;
  $("account").hidden = false;
  $("whoami").textContent = `signed in as ${name}`;
}

for (const { id, title, private: locked } of await callMethod("chat.rooms")) {
  const button = document.createElement("button");
  button.dataset.room = id;
  if (locked) button.innerHTML = LOCK; // an icon that needs no emoji font
  button.append(`${locked ? "" : "# "}${title}`);
  button.addEventListener("click", () => enter(id));
  const item = document.createElement("li");
  item.append(button);
  $("rooms").append(item);
}
enter(room);
