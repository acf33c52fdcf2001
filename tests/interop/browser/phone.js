// A browser phone for switchboard's browser test: JsSIP (npm `jssip`) with the browser's own
// WebSocket and WebRTC. esbuild bundles this file with JsSIP at test time (tests/support/
// browser_phone.py); phone.html loads the bundle. The test drives it over the Chrome DevTools
// Protocol through `window.phone`:
//   phone.start(wsUrl, sipUri)  registers; incoming calls are answered with the (fake)
//                               microphone, a REFER is accepted (JsSIP places the new call)
//   phone.events                what happened, in order: {event, at, ...}
//   phone.state()               the UA and every session as JsSIP reports them now
//   phone.media(index)          what WebRTC says of a session's media (ICE, RTP counters)
//   phone.hangup()              ends every live session
//   phone.render()              shows every call's state now (the screenshots' subject)
'use strict';

import JsSIP from 'jssip';

const events = [];
const sessions = [];
let ua = null;

const say = (event, extra = {}) => {
  events.push({ event, at: Date.now(), ...extra });
  document.getElementById('log').textContent +=
    `${event} ${JSON.stringify(extra).slice(0, 200)}\n`;
};

const media = { mediaConstraints: { audio: true, video: false } };

function describe(s, index) {
  const pc = s.connection;
  return {
    index,
    direction: s.direction,
    call_id: s._request ? s._request.call_id : null,
    status: s.status,
    established: s.isEstablished(),
    ended: s.isEnded(),
    on_hold: s.isOnHold(),
    ice: pc ? pc.iceConnectionState : null,
    connection: pc ? pc.connectionState : null,
    local_sdp: pc && pc.localDescription ? pc.localDescription.sdp : null,
  };
}

function watch(s) {
  const index = sessions.push(s) - 1;
  const base = () => ({ index, call_id: s._request ? s._request.call_id : null });
  s.on('progress', () => say('progress', base()));
  s.on('accepted', () => say('accepted', base()));
  s.on('confirmed', () => say('confirmed', base()));
  s.on('ended', (e) => say('ended', { ...base(), originator: e.originator, cause: e.cause }));
  s.on('failed', (e) => say('failed', { ...base(), originator: e.originator, cause: e.cause }));
  s.on('hold', (e) => say('hold', { ...base(), originator: e.originator }));
  s.on('unhold', (e) => say('unhold', { ...base(), originator: e.originator }));
  s.on('refer', (e) => {
    say('refer', { ...base(), target: String(e.request.refer_to.uri) });
    // JsSIP answered 202 already; accepting places the call to the Refer-To target and
    // reports its progress to the referrer in NOTIFYs (RFC 3515).
    e.accept(null, media);
  });
  s.on('peerconnection', (e) => {
    e.peerconnection.addEventListener('iceconnectionstatechange', () => {
      say('ice', { ...base(), state: e.peerconnection.iceConnectionState });
    });
  });
}

// What the screenshots show beside the event log: each call as JsSIP and WebRTC see it now.
async function render() {
  const lines = [];
  for (const [index, s] of sessions.entries()) {
    const d = describe(s, index);
    let rtp = '';
    if (s.connection && !d.ended) {
      const m = await window.phone.media(index);
      rtp = ` rtp sent ${m.packets_sent} received ${m.packets_received}`;
    }
    lines.push(`#${index} ${d.direction} ${d.call_id} status ${d.status}` +
               ` hold ${JSON.stringify(d.on_hold)} ice ${d.ice}${rtp}${d.ended ? ' ended' : ''}`);
  }
  document.getElementById('calls').textContent = lines.join('\n');
}
setInterval(() => { render().catch(() => {}); }, 250);

window.phone = {
  events,
  render,
  start(url, uri) {
    ua = new JsSIP.UA({
      sockets: [new JsSIP.WebSocketInterface(url)],
      uri,
      register: true,
      register_expires: 300,
      session_timers: false,
    });
    ua.on('connected', () => say('connected'));
    ua.on('disconnected', () => say('disconnected'));
    ua.on('registered', () => say('registered', { contact: ua.contact.toString() }));
    ua.on('registrationFailed', (e) => say('registrationFailed', { cause: e.cause }));
    ua.on('newRTCSession', (e) => {
      say('session', { originator: e.originator, call_id: e.request.call_id });
      watch(e.session);
      if (e.originator === 'remote') {
        e.session.answer(media);
      }
    });
    ua.start();
  },
  state() {
    return {
      registered: ua !== null && ua.isRegistered(),
      connected: ua !== null && ua.isConnected(),
      sessions: sessions.map(describe),
    };
  },
  async media(index) {
    const pc = sessions[index].connection;
    const out = { ice: pc.iceConnectionState, connection: pc.connectionState,
                  packets_received: 0, packets_sent: 0, pair: null };
    (await pc.getStats()).forEach((report) => {
      if (report.type === 'inbound-rtp' && report.kind === 'audio') {
        out.packets_received += report.packetsReceived || 0;
      } else if (report.type === 'outbound-rtp' && report.kind === 'audio') {
        out.packets_sent += report.packetsSent || 0;
      } else if (report.type === 'candidate-pair' && report.nominated &&
                 report.state === 'succeeded') {
        out.pair = report.id;
      }
    });
    return out;
  },
  hangup() {
    for (const s of sessions) {
      if (!s.isEnded()) s.terminate();
    }
  },
};
