"""The warm registry shared through Redis: single-flight writes across processes and hosts.

What it keeps in Redis and the scripts that change it are in :mod:`convo.warm.redis_scripts`;
how waiters are woken is in :mod:`convo.warm.redis_wake`. This module adds the clients
(a bounded *blocking* pool, sync and per event loop), the round trips (one script each),
and what happens when Redis is in trouble: the registry falls back to an in-process
:class:`~convo.warm.WarmRegistry`, says so once on the ``convo`` logger, and rejoins Redis
when a probe (at most one every ``probe_interval`` seconds) answers. No ``redis`` exception
leaves any method.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from convo.warm.keys import (
    Flight,
    WarmKey,
    WarmState,
    WarmWaitTimeout,
    check_refresh_at,
    check_ttl,
)
from convo.warm.keys import needs_warming as _needs_warming
from convo.warm.memory import RETENTION_SECONDS, WarmRegistry, wait_event
from convo.warm.redis_clients import (
    DEFAULT_MAX_CONNECTIONS,
    POOL_TIMEOUT,
    Health,
    Route,
    client_options,
    import_redis,
    trouble_types,
    where,
)
from convo.warm.redis_pool import SHARE_INTERVAL, PoolExchange
from convo.warm.redis_scripts import SCRIPTS, Reply, parse_reply
from convo.warm.redis_wake import (
    WAKE_ALL,
    WAKE_ONE,
    AsyncWake,
    SyncWake,
    listening_anew,
    listening_anew_sync,
)

if TYPE_CHECKING:
    import redis as redis_sync
    import redis.asyncio as redis_async

    from convo.policy import PrefixPool

__all__ = ["RedisWarmRegistry"]


@attrs.define
class _Loop:
    """What one event loop needs: its client (and whether convo built it), scripts, wake-ups."""

    client: Any
    owned: bool
    scripts: dict[str, Any]
    wake: AsyncWake


class RedisWarmRegistry:
    """Warm state shared through Redis, with the guarantees of :class:`WarmRegistry`.

    Every process (on any host) that builds a ``RedisWarmRegistry`` on the same Redis and
    ``prefix`` shares one single-flight claim and one TTL clock per prefix.

    - **One round trip per call.** ``acquire`` reads the state, takes the claim or (with
      ``refresh_at``) records a reader's read, and returns the state with the flight, in
      one script: a warm request costs one ``EVALSHA`` before it is sent.
    - **Waiters are woken, not polled**: through one pub/sub subscription per event loop
      (and one for the registry's threads), shared by every waiter. A waiter re-checks on
      its own only when the claim it waits for would lapse (a crashed writer) and at most
      every ``poll_interval`` seconds (a lost wake-up).
    - **A bounded, blocking pool.** Built from a URL (or deriving its async client from a
      sync one), it uses ``BlockingConnectionPool`` with ``max_connections`` connections
      (per event loop for the async client): callers beyond that queue for a connection
      instead of failing, so one process may run any number of sessions.
    - **Redis trouble degrades, never breaks.** When Redis does not answer, the registry
      uses an in-process :class:`WarmRegistry` (single flight within the process), logs
      one warning on the ``convo`` logger, tries Redis again at most every
      ``probe_interval`` seconds (registry clock), and rejoins when it answers. No
      ``redis`` exception leaves any method.
    - **Cancellation leaves nothing behind**: a cancelled ``acquire_async`` unregisters its
      wake-up, and releases the claim if its script may have taken one.
    - **The policy learns from the fleet.** The gaps the TTL and keep-alive policy decides
      from (:func:`convo.policy.pool_for`) are pooled across every process on the same
      Redis and ``prefix``: each process records in memory and exchanges its new
      observations with the others every ``share_interval`` seconds (5 by default), from a
      background thread, so a turn gains no round trip; a prefix unused for over an hour is
      let go (:mod:`convo.warm.redis_pool`, ``docs/economics.md``). ``share_interval=None``
      keeps them per process.

    Hosts must keep their clocks in step (NTP): TTL times are the hosts' wall clocks, and a
    skew of *s* seconds moves the live window by *s*.

    Args:
        redis: A ``redis.Redis`` client or a URL (``redis://127.0.0.1:6379/0``).
        async_redis: The ``redis.asyncio.Redis`` client for the ``*_async`` methods. Given a
            URL, one is built per event loop; given a sync client and no async one, one is
            built per loop from the sync client's host, port, database and credentials.
        prefix: Prepended to every key (and the wake-up channel) convo uses.
        clock: Wall-clock seconds; injectable for tests.
        write_timeout: Seconds (on Redis's clock) before a silent writer's claim lapses.
        poll_interval: Longest a waiter sleeps without a wake-up before checking anyway.
        max_connections: Size of each pool convo builds (default 50); ignored for clients
            you pass, whose pools are yours.
        probe_interval: While Redis is down, seconds (registry clock) between attempts to
            reach it again.
        share_interval: Seconds (real time) between exchanges of the policy's observations
            with other processes (default 5; ``convo.warm.redis_pool.SHARE_INTERVAL`` says
            why); ``None`` keeps them per process.
        share_cap: Observations kept per prefix in Redis (the latest).

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 Woken waiters, ``refresh_at``, ``Flight.state``, blocking pools
       (``max_connections``), degrading to an in-process registry (``probe_interval``).
    .. versionchanged:: 0.3 The policy's pools are shared across processes, by default
       (``share_interval``, ``share_cap``, :meth:`shared_pool`, :meth:`exchange_observations`).
    """

    def __init__(
        self,
        redis: redis_sync.Redis | str,
        *,
        async_redis: redis_async.Redis | None = None,
        prefix: str = "convo:warm:",
        clock: Callable[[], float] = time.time,
        write_timeout: float = 60.0,
        poll_interval: float = 1.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        probe_interval: float = 5.0,
        share_interval: float | None = SHARE_INTERVAL,
        share_cap: int = 4096,
    ) -> None:
        module = import_redis()
        if write_timeout <= 0 or poll_interval <= 0 or probe_interval <= 0:
            raise ValueError(
                "write_timeout, poll_interval and probe_interval must be positive seconds"
            )
        if share_interval is not None and not share_interval > 0:
            raise ValueError(
                f"share_interval must be positive seconds, or None to keep the policy's "
                f"observations per process; got {share_interval!r}"
            )
        if isinstance(share_cap, bool) or not isinstance(share_cap, int) or share_cap < 1:
            raise ValueError(f"share_cap must be a positive int, got {share_cap!r}")
        if not isinstance(max_connections, int) or max_connections < 2:
            raise ValueError(
                f"max_connections must be an int of at least 2 (one is the wake-up "
                f"subscription's), got {max_connections!r}"
            )
        self._module = module
        self._max_connections = max_connections
        if isinstance(redis, str):
            self._url: str | None = redis
            pool = module.BlockingConnectionPool.from_url(
                redis,
                max_connections=max_connections,
                timeout=POOL_TIMEOUT,
                **client_options(module, asyncio_flavour=False),
            )
            self._redis: redis_sync.Redis = module.Redis(connection_pool=pool)
        elif isinstance(redis, module.Redis):
            self._url = None
            self._redis = redis
        else:
            raise TypeError(
                f"redis must be a redis.Redis client or a URL string, not {type(redis).__name__}"
            )
        self._given_async = async_redis
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Loop]
        self._loops = weakref.WeakKeyDictionary()
        self._prefix = prefix
        self._channel = f"{prefix}wake"
        self._clock = clock
        self._write_timeout_ms = max(1, math.ceil(write_timeout * 1000))
        self._poll_interval = float(poll_interval)
        self._retention_ms = int(RETENTION_SECONDS * 1000)
        self._trouble = trouble_types(module)
        self._sync_scripts = {n: self._redis.register_script(t) for n, t in SCRIPTS.items()}
        self._sync_wake = SyncWake(self._redis, self._channel)
        self._local = WarmRegistry(
            clock=clock, write_timeout=write_timeout, poll_interval=poll_interval
        )
        self._health = Health(
            clock,
            float(probe_interval),
            where(self._url, self._redis.connection_pool.connection_kwargs),
        )
        # Releases of claims by cancelled acquires, kept referenced until they finish.
        self._releases: set[asyncio.Task[None]] = set()
        self._exchange = (
            None
            if share_interval is None
            else PoolExchange(
                self._redis,
                prefix=prefix,
                interval=float(share_interval),
                cap=share_cap,
                trouble=self._trouble,
                clock=clock,
            )
        )

    @property
    def degraded(self) -> bool:
        """Whether Redis is currently considered down (warm state is per process)."""
        return self._health.down

    # -- clients ---------------------------------------------------------------------------

    def _loop(self) -> _Loop:
        """The async client, scripts and wake-ups of the running loop, built on first use."""
        loop = asyncio.get_running_loop()
        found = self._loops.get(loop)
        if found is not None:
            return found
        module = self._module
        client: Any = self._given_async
        owned = client is None
        if client is None:
            options = client_options(module, asyncio_flavour=True)
            if self._url is not None:
                pool = module.asyncio.BlockingConnectionPool.from_url(
                    self._url,
                    max_connections=self._max_connections,
                    timeout=POOL_TIMEOUT,
                    **options,
                )
            else:
                kwargs = self._redis.connection_pool.connection_kwargs
                if "host" not in kwargs:
                    raise TypeError(
                        "cannot derive an async client from this redis.Redis; "
                        "pass async_redis= (a redis.asyncio.Redis) or a URL"
                    )
                pool = module.asyncio.BlockingConnectionPool(
                    max_connections=self._max_connections,
                    timeout=POOL_TIMEOUT,
                    **{
                        k: kwargs[k]
                        for k in ("host", "port", "db", "username", "password")
                        if k in kwargs
                    },
                    **options,
                )
            client = module.asyncio.Redis(connection_pool=pool)
        scripts = {n: client.register_script(t) for n, t in SCRIPTS.items()}

        async def shutdown() -> None:
            # The loop is ending without aclose (asyncio.run cancelled the listener): close
            # what this registry opened on it, or its connections are left to the GC.
            if self._loops.get(loop) is found:
                del self._loops[loop]
                if owned:
                    await client.aclose()
                    await client.connection_pool.disconnect()

        found = _Loop(client, owned, scripts, AsyncWake(client, self._channel, shutdown))
        self._loops[loop] = found
        # Subscribe at once, in the background: the first waiters on this loop then find
        # the subscription up (no extra check), and a loop that ends without aclose has its
        # connections closed by the listener's shutdown.
        found.wake.start()
        return found

    def close(self) -> None:
        """Stop the wake-up thread, send the policy's last observations and stop sharing
        them, and close the sync client if this registry built it."""
        self._sync_wake.close()
        if self._exchange is not None:
            self._exchange.close()
        if self._url is not None:
            with contextlib.suppress(Exception):
                self._redis.close()
                self._redis.connection_pool.disconnect()

    async def aclose(self) -> None:
        """Stop the running loop's wake-ups and close its client if this registry built it;
        send the policy's last observations and stop sharing them."""
        if self._exchange is not None:
            # The exchange is the sync client's (a thread's): off the loop.
            await asyncio.to_thread(self._exchange.close)
        found = self._loops.pop(asyncio.get_running_loop(), None)
        if found is None:
            return
        await found.wake.aclose()
        if found.owned:
            with contextlib.suppress(Exception):
                await found.client.aclose()
                await found.client.connection_pool.disconnect()

    # -- the policy's pools -----------------------------------------------------------------

    def shared_pool(self, prefix_key: str) -> PrefixPool | None:
        """The policy's pool of *prefix_key* for this registry's sessions, shared with every
        process on the same Redis and ``prefix``; ``None`` with ``share_interval=None``
        (then :func:`convo.policy.pool_for` keeps one per process)."""
        return None if self._exchange is None else self._exchange.pool(prefix_key)

    def exchange_observations(self) -> int:
        """Send the policy's observations recorded since the last exchange and merge the
        other processes' new ones, now, in one round trip (the background thread does this
        every ``share_interval`` seconds). Returns how many were merged; 0 when Redis did
        not answer (what was to be sent is kept for the next exchange)."""
        return 0 if self._exchange is None else self._exchange.exchange()

    # -- keys and arguments ----------------------------------------------------------------

    def _base(self, key: WarmKey) -> str:
        # A hash tag ({...}) puts both keys of one prefix in one Redis Cluster slot, as the
        # Lua scripts that touch them together require.
        return f"{self._prefix}{{{key.workspace}:{key.model}:{key.fingerprint}}}"

    def _keys(self, key: WarmKey) -> list[str]:
        base = self._base(key)
        return [f"{base}:state", f"{base}:writer"]

    def _acquire_args(
        self, now: float, token: str, ttl_seconds: float, refresh: float | None
    ) -> list[Any]:
        return [
            repr(float(now)),
            token,
            self._write_timeout_ms,
            "" if refresh is None else repr(float(refresh)),
            repr(float(ttl_seconds)),
            self._retention_ms,
        ]

    def _began_args(self, flight: Flight) -> list[Any]:
        return [
            flight.token,
            self._channel,
            WAKE_ALL + self._base(flight.key),
            repr(float(flight.acquired_at)),
            repr(float(flight.ttl_seconds)),
            repr(float(self._clock())),
            self._retention_ms,
        ]

    def _record_args(
        self, key: WarmKey, started_at: float, ttl_seconds: float, wrote: bool, read: bool
    ) -> list[Any]:
        return [
            self._channel,
            WAKE_ALL + self._base(key),
            repr(float(started_at)),
            repr(float(ttl_seconds)),
            "1" if wrote else "0",
            "1" if read else "0",
            repr(float(self._clock())),
            self._retention_ms,
        ]

    def _release_args(self, flight: Flight) -> list[Any]:
        return [flight.token, self._channel, WAKE_ONE + self._base(flight.key)]

    # -- acquiring -------------------------------------------------------------------------

    def _flight(
        self, key: WarmKey, reply: Reply, token: str, ttl: float, start: float, now: float
    ) -> Flight:
        writer = reply.code == 2
        return Flight(
            key=key,
            role="writer" if writer else "reader",
            token=token if writer else "",
            waited=now - start,
            acquired_at=now,
            ttl_seconds=ttl,
            state=reply.state,
        )

    def _delay(
        self, key: WarmKey, reply: Reply, start: float, now: float, timeout: float | None
    ) -> float:
        """Seconds to wait for a wake-up before checking anyway, or raise on ``timeout``."""
        delay = self._poll_interval
        if reply.claim_seconds is not None:
            # The claim lapses then on Redis's clock (a crashed writer): look again at once.
            delay = min(delay, reply.claim_seconds + 0.001)
        if timeout is not None:
            if now - start >= timeout:
                raise WarmWaitTimeout(key, now - start)
            delay = min(delay, start + timeout - now)
        return max(0.0, delay)

    @staticmethod
    def _remaining(timeout: float | None, spent: float) -> float | None:
        return None if timeout is None else max(0.0, timeout - spent)

    def acquire(
        self,
        key: WarmKey,
        *,
        ttl_seconds: float,
        timeout: float | None = None,
        refresh_at: float | None = None,
    ) -> Flight:
        """Get a role for a request about to send ``key``'s prefix (see ``WarmRegistry.acquire``).

        One script, so one round trip, unless the caller has to wait for another writer.

        Raises:
            WarmWaitTimeout: ``timeout`` passed while another request was writing.
        """
        check_ttl(ttl_seconds)
        check_refresh_at(refresh_at)
        start = self._clock()
        route = self._health.route()
        if route != "local":
            try:
                flight = self._acquire_redis(key, ttl_seconds, timeout, refresh_at, start, route)
            except WarmWaitTimeout:
                raise
            except self._trouble as error:
                self._health.failed(error)
            else:
                return flight
        spent = self._clock() - start
        flight = self._local.acquire(
            key,
            ttl_seconds=ttl_seconds,
            timeout=self._remaining(timeout, spent),
            refresh_at=None if refresh_at is None else refresh_at + spent,
        )
        return attrs.evolve(flight, waited=flight.waited + spent)

    def _acquire_redis(
        self,
        key: WarmKey,
        ttl_seconds: float,
        timeout: float | None,
        refresh_at: float | None,
        start: float,
        route: Route,
    ) -> Flight:
        script = self._sync_scripts["acquire"]
        keys = self._keys(key)
        member = self._base(key).encode()
        token = uuid.uuid4().hex
        # Registered before the first check (see _acquire_redis_async).
        event = threading.Event()
        self._sync_wake.add(member, event)
        now = start  # the first check is at the start: a reader at once waited 0
        try:
            while True:
                event.clear()
                refresh = None if refresh_at is None else refresh_at + (now - start)
                args = self._acquire_args(now, token, ttl_seconds, refresh)
                listening = self._sync_wake.up
                reply = parse_reply(script(keys=keys, args=args))
                self._health.answered(route)  # a probe rejoins now, not after a long wait
                route = "redis"
                if reply.code == 2:
                    self._sync_wake.start()  # others will likely wait for this write
                if reply.code:
                    return self._flight(key, reply, token, ttl_seconds, start, now)
                # As in _acquire_redis_async: check again once a subscription listens.
                if listening_anew_sync(self._sync_wake, listening, self._poll_interval):
                    self._delay(key, reply, start, now, timeout)  # raises when used up
                    now = self._clock()
                    continue
                event.wait(self._delay(key, reply, start, now, timeout))
                now = self._clock()
        finally:
            self._sync_wake.discard(member, event)

    async def acquire_async(
        self,
        key: WarmKey,
        *,
        ttl_seconds: float,
        timeout: float | None = None,
        refresh_at: float | None = None,
    ) -> Flight:
        """Like :meth:`acquire`, awaiting instead of blocking the thread.

        Cancelled at any point, it leaves no wake-up registered and no claim taken (a
        claim its script may have taken just before the cancellation is released).
        """
        check_ttl(ttl_seconds)
        check_refresh_at(refresh_at)
        start = self._clock()
        route = self._health.route()
        if route != "local":
            try:
                flight = await self._acquire_redis_async(
                    key, ttl_seconds, timeout, refresh_at, start, route
                )
            except WarmWaitTimeout:
                raise
            except self._trouble as error:
                self._health.failed(error)
            else:
                return flight
        spent = self._clock() - start
        flight = await self._local.acquire_async(
            key,
            ttl_seconds=ttl_seconds,
            timeout=self._remaining(timeout, spent),
            refresh_at=None if refresh_at is None else refresh_at + spent,
        )
        return attrs.evolve(flight, waited=flight.waited + spent)

    async def _acquire_redis_async(
        self,
        key: WarmKey,
        ttl_seconds: float,
        timeout: float | None,
        refresh_at: float | None,
        start: float,
        route: Route,
    ) -> Flight:
        here = self._loop()
        script = here.scripts["acquire"]
        keys = self._keys(key)
        member = self._base(key).encode()
        token = uuid.uuid4().hex
        # Registered before the first check: a wake-up the subscription hands out between
        # the check's reply and the wait must find this waiter already there.
        event = asyncio.Event()
        here.wake.add(member, event)
        now = start  # the first check is at the start: a reader at once waited 0
        try:
            while True:
                event.clear()
                refresh = None if refresh_at is None else refresh_at + (now - start)
                args = self._acquire_args(now, token, ttl_seconds, refresh)
                # The script runs in a task of its own, shielded: cancelled while it is on
                # the wire, this coroutine still learns whether it took the claim, and gives
                # it back (see _after_cancel). Cancelling the call itself would leave a claim
                # nobody owns until write_timeout.
                call = asyncio.ensure_future(script(keys=keys, args=args))
                listening = here.wake.up
                try:
                    reply = parse_reply(await asyncio.shield(call))
                except asyncio.CancelledError:
                    await self._after_cancel(here, call, keys, token, member)
                    raise
                self._health.answered(route)  # a probe rejoins now, not after a long wait
                route = "redis"
                if reply.code == 2:
                    here.wake.start()  # others on this loop will likely wait for this write
                if reply.code:
                    return self._flight(key, reply, token, ttl_seconds, start, now)
                # Unless one subscription listened from before the check until now, a
                # release published meanwhile may be lost: once one listens (started again
                # if it dropped), check once more. Each such check needs a new subscription,
                # so this never spins.
                if await listening_anew(here.wake, listening, self._poll_interval):
                    self._delay(key, reply, start, now, timeout)  # raises when used up
                    now = self._clock()
                    continue
                await wait_event(event, self._delay(key, reply, start, now, timeout))
                now = self._clock()
        finally:
            here.wake.discard(member, event)

    async def _after_cancel(
        self, here: _Loop, call: asyncio.Future[Any], keys: list[str], token: str, member: bytes
    ) -> None:
        """Let a cancelled acquire's script finish; release the claim if it took one.

        Done in a task of its own (kept referenced until it ends) and awaited shielded, so
        a second cancellation cannot stop it half-way.
        """

        async def settle() -> None:
            try:
                reply = parse_reply(await call)
            except Exception:  # the script failed: it took nothing (or Redis is gone)
                return
            if reply.code == 2:
                with contextlib.suppress(Exception):
                    await here.scripts["release"](
                        keys=keys, args=[token, self._channel, WAKE_ONE + member.decode()]
                    )

        task = asyncio.get_running_loop().create_task(settle())
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)

    # -- reporting back --------------------------------------------------------------------

    def _call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run a script on the sync client; ``None`` when Redis is down (now or found so)."""
        route = self._health.route()
        if route == "local":
            return None
        try:
            result = self._sync_scripts[name](keys=keys, args=args)
        except self._trouble as error:
            self._health.failed(error)
            return None
        self._health.answered(route)
        return result

    async def _call_async(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Like :meth:`_call`, on the running loop's client."""
        route = self._health.route()
        if route == "local":
            return None
        try:
            result = await self._loop().scripts[name](keys=keys, args=args)
        except self._trouble as error:
            self._health.failed(error)
            return None
        self._health.answered(route)
        return result

    def began(self, flight: Flight) -> None:
        """Report that ``flight``'s response has begun: a writer's entry is now readable."""
        if flight.role != "writer":
            return
        if self._local._holds(flight):  # a flight the in-process fallback gave
            self._local.began(flight)
            return
        self._call("began", self._keys(flight.key), self._began_args(flight))

    async def began_async(self, flight: Flight) -> None:
        """Like :meth:`began`, without blocking the event loop."""
        if flight.role != "writer":
            return
        if self._local._holds(flight):
            self._local.began(flight)
            return
        await self._call_async("began", self._keys(flight.key), self._began_args(flight))

    def abandon(self, flight: Flight) -> None:
        """Report that a writer failed before its response began; one waiter takes over."""
        if flight.role != "writer":
            return
        if self._local._holds(flight):
            self._local.abandon(flight)
            return
        self._call("release", self._keys(flight.key), self._release_args(flight))

    async def abandon_async(self, flight: Flight) -> None:
        """Like :meth:`abandon`, without blocking the event loop."""
        if flight.role != "writer":
            return
        if self._local._holds(flight):
            self._local.abandon(flight)
            return
        await self._call_async("release", self._keys(flight.key), self._release_args(flight))

    def record(
        self, key: WarmKey, *, started_at: float, ttl_seconds: float, wrote: bool, read: bool
    ) -> None:
        """Touch the TTL clock after a response (see ``WarmRegistry.record``).

        While Redis is down the in-process fallback keeps the touch.
        """
        check_ttl(ttl_seconds)
        if not (wrote or read):
            return
        args = self._record_args(key, started_at, ttl_seconds, wrote, read)
        if self._call("record", self._keys(key), args) is None:
            self._local.record(
                key, started_at=started_at, ttl_seconds=ttl_seconds, wrote=wrote, read=read
            )

    async def record_async(
        self, key: WarmKey, *, started_at: float, ttl_seconds: float, wrote: bool, read: bool
    ) -> None:
        """Like :meth:`record`, without blocking the event loop."""
        check_ttl(ttl_seconds)
        if not (wrote or read):
            return
        args = self._record_args(key, started_at, ttl_seconds, wrote, read)
        if await self._call_async("record", self._keys(key), args) is None:
            self._local.record(
                key, started_at=started_at, ttl_seconds=ttl_seconds, wrote=wrote, read=read
            )

    # -- inspecting ------------------------------------------------------------------------

    def state(self, key: WarmKey) -> WarmState | None:
        """Return what Redis knows about ``key``'s prefix, or ``None`` if nothing.

        While Redis is down, what the in-process fallback knows.
        """
        reply = self._call("state", self._keys(key), [])
        if reply is None:
            return self._local.state(key)
        return parse_reply(reply).state

    async def state_async(self, key: WarmKey) -> WarmState | None:
        """Like :meth:`state`, without blocking the event loop."""
        reply = await self._call_async("state", self._keys(key), [])
        if reply is None:
            return self._local.state(key)
        return parse_reply(reply).state

    def needs_warming(self, key: WarmKey, *, margin: float = 0.0) -> bool:
        """Return whether a pre-warm should be sent now (see ``WarmRegistry.needs_warming``)."""
        return _needs_warming(self.state(key), self._clock(), margin)

    async def needs_warming_async(self, key: WarmKey, *, margin: float = 0.0) -> bool:
        """Like :meth:`needs_warming`, without blocking the event loop."""
        return _needs_warming(await self.state_async(key), self._clock(), margin)
