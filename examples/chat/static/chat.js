// The chat page: plain JavaScript on the modelence-trio client, no build step.
import { ClientChannel, callMethod, startWebsockets } from "/_modelence/modelence.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const name = params.get("name") ?? localStorage.getItem("chat-name") ?? "";
let room = params.get("room") ?? "lobby";

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
    $("status").textContent = status;
    $("status").dataset.status = status;
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
    await chat.joinChannel(room);
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

if (name) {
  $("signin").hidden = true;
  $("whoami").hidden = false;
  $("whoami").textContent = `signed in as ${name}`;
}

for (const { id, title, private: locked } of await callMethod("chat.rooms")) {
  const button = document.createElement("button");
  button.dataset.room = id;
  button.textContent = `${locked ? "🔒 " : "# "}${title}`;
  button.addEventListener("click", () => enter(id));
  const item = document.createElement("li");
  item.append(button);
  $("rooms").append(item);
}
enter(room);
