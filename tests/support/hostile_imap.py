"""A tiny hostile IMAP server (asyncio, 127.0.0.1, a free port, in a thread) for testing
``postroom import imap`` against a source that lies, floods, drips or names folders to
escape. ``behaviour`` picks the attack; the rest answers like a minimal honest server with
one folder holding one message."""

from __future__ import annotations

import asyncio
import threading

MESSAGE = b"Subject: hello\r\nFrom: a@b.example\r\n\r\nbody\r\n"


class HostileImap:
    def __init__(self, behaviour: str, folders: list[bytes] | None = None) -> None:
        self.behaviour = behaviour
        self.folders = folders or [b'* LIST () "/" INBOX']
        self.port = 0
        self.commands: list[bytes] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.base_events.Server | None = None

    def start(self) -> HostileImap:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        def shut() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.call_later(0.1, self._loop.stop)

        self._loop.call_soon_threadsafe(shut)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(serve())
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._talk(reader, writer)
        except (ConnectionError, asyncio.CancelledError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _flood(self, writer: asyncio.StreamWriter, line: bytes, seconds: float = 60) -> None:
        """Send ``line`` over and over (bounded: ``seconds``, as every test loop is)."""
        end = asyncio.get_running_loop().time() + seconds
        chunk = line * 1000
        while asyncio.get_running_loop().time() < end:
            writer.write(chunk)
            await writer.drain()

    async def _drip(self, writer: asyncio.StreamWriter, data: bytes, every: float) -> None:
        for i in range(len(data)):
            writer.write(data[i:i + 1])
            await writer.drain()
            await asyncio.sleep(every)

    async def _talk(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        b = self.behaviour
        greeting = b"* OK [CAPABILITY IMAP4rev1] hostile ready\r\n"
        if b == "drip":  # the greeting, a byte at a time, each well within the socket timeout
            await self._drip(writer, greeting * 100, 0.5)
            return
        writer.write(greeting)
        while True:
            line = await reader.readline()
            if not line:
                return
            self.commands.append(line)
            tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
            command = rest.split(b" ", 1)[0].upper()
            if command == b"UID":
                command = rest.split(b" ", 2)[1].upper()
            tail = tag + b" OK done\r\n"
            if command == b"CAPABILITY":
                writer.write(b"* CAPABILITY IMAP4rev1\r\n" + tail)
            elif command == b"LOGIN":
                if b == "continuation":
                    await self._flood(writer, b"+ go on\r\n")
                    return
                writer.write(tail)
            elif command == b"LIST":
                if b == "flood":
                    await self._flood(writer, b'* LIST () "/" "same folder again and again"\r\n')
                    return
                writer.write(b"".join(f + b"\r\n" for f in self.folders) + tail)
            elif command in (b"EXAMINE", b"SELECT"):
                writer.write(b"* 1 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT 2] ok\r\n"
                             + tag + b" OK [READ-ONLY] done\r\n")
            elif command == b"FETCH" and b"BODY" in rest.upper():
                if b == "huge_literal":
                    writer.write(b"* 1 FETCH (UID 1 BODY[] {999999999999}\r\n")
                    await self._flood(writer, b"x" * 1000, seconds=30)
                    return
                writer.write(b"* 1 FETCH (UID 1 BODY[] {%d}\r\n%s)\r\n" % (len(MESSAGE), MESSAGE) + tail)
            elif command == b"FETCH":
                writer.write(b'* 1 FETCH (UID 1 FLAGS (\\Seen) INTERNALDATE "01-Jan-2020 00:00:00 +0000" '
                             b"RFC822.SIZE %d)\r\n" % len(MESSAGE) + tail)
            elif command == b"LOGOUT":
                writer.write(b"* BYE bye\r\n" + tail)
                await writer.drain()
                return
            else:
                writer.write(tail)
            await writer.drain()
