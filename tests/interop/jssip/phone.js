// A JsSIP phone under node for switchboard's WebSocket tests: the `ws` package is its
// WebSocket (JsSIP opens it with the subprotocol "sip"), a stand-in RTCPeerConnection gives
// it SDP (node has no WebRTC; no media flows). It registers, answers incoming calls or
// places one, and reports what happens as JSON lines on stdout:
//   {"event": "registered"|"registrationFailed"|"incoming"|"progress"|"confirmed"|"ended"|
//             "failed"|"hold"|"unhold"|"refer"|"transferring"|"disconnected", ...}
// Commands come as lines on stdin: `call SIP-URI`, `hangup`, `quit`.
// A wss: URL is verified against NODE_EXTRA_CA_CERTS (the test's CA).
'use strict';

const readline = require('readline');
const WebSocket = require('ws');

const say = (event, extra = {}) => process.stdout.write(JSON.stringify({ event, ...extra }) + '\n');

// Every frame each way, as `rx`/`tx` events: the test's record of the wire.
class TracedWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener('message', (e) => say('rx', { data: String(e.data) }));
  }
  send(data, ...rest) {
    say('tx', { data: String(data) });
    return super.send(data, ...rest);
  }
}
globalThis.WebSocket = TracedWebSocket;
globalThis.window = globalThis;

const FAKE_SDP = [
  'v=0', 'o=- 4242 1 IN IP4 127.0.0.1', 's=-', 'c=IN IP4 127.0.0.1', 't=0 0',
  'm=audio 9 RTP/AVP 0', 'a=rtpmap:0 PCMU/8000', 'a=sendrecv', '',
].join('\r\n');

class FakePeerConnection extends EventTarget {
  constructor() {
    super();
    this.iceGatheringState = 'complete';
    this.iceConnectionState = 'connected';
    this.signalingState = 'stable';
    this.localDescription = null;
    this.remoteDescription = null;
  }
  createOffer() { return Promise.resolve({ type: 'offer', sdp: FAKE_SDP }); }
  createAnswer() { return Promise.resolve({ type: 'answer', sdp: FAKE_SDP }); }
  setLocalDescription(d) { this.localDescription = d; return Promise.resolve(); }
  setRemoteDescription(d) { this.remoteDescription = d; return Promise.resolve(); }
  getSenders() { return []; }
  getReceivers() { return []; }
  addTrack() {}
  close() {}
}
globalThis.RTCPeerConnection = FakePeerConnection;
globalThis.RTCSessionDescription = class { constructor(init) { Object.assign(this, init); } };

const JsSIP = require('jssip');

const [url, uri] = process.argv.slice(2);

const ua = new JsSIP.UA({
  sockets: [new JsSIP.WebSocketInterface(url)],
  uri,
  register: true,
  register_expires: 300,
  session_timers: false,
  connection_recovery_min_interval: 1,
  connection_recovery_max_interval: 2,
});
const media = { mediaConstraints: { audio: false, video: false } };
let session = null;

function watch(s) {
  session = s;
  s.on('progress', () => say('progress'));
  s.on('confirmed', () => say('confirmed', { call_id: s._request ? s._request.call_id : null }));
  s.on('ended', (e) => say('ended', { originator: e.originator, cause: e.cause }));
  s.on('failed', (e) => say('failed', { originator: e.originator, cause: e.cause }));
  s.on('hold', (e) => say('hold', { originator: e.originator }));
  s.on('unhold', (e) => say('unhold', { originator: e.originator }));
  s.on('reinvite', (e) => say('reinvite', { sdp: e.request.body }));
  // A REFER (blind transfer, RFC 3515) is accepted: JsSIP NOTIFYs its progress and places
  // the new call, which becomes the phone's current session.
  s.on('refer', (e) => {
    say('refer', { target: String(e.request.refer_to.uri), via: e.request.getHeader('via') });
    e.accept((next) => {
      say('transferring', { call_id: next._request ? next._request.call_id : null });
      watch(next);
    }, media);
  });
}

ua.on('registered', () => say('registered', { contact: ua.contact.toString() }));
ua.on('registrationFailed', (e) => say('registrationFailed', { cause: e.cause }));
ua.on('disconnected', () => say('disconnected'));
ua.on('newRTCSession', (e) => {
  if (e.originator !== 'remote') return;
  say('incoming', { call_id: e.request.call_id, via: e.request.getHeader('via') });
  watch(e.session);
  e.session.answer(media);
});

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const [command, arg] = line.trim().split(/\s+/, 2);
  if (command === 'call') {
    watch(ua.call(arg, media));
  } else if (command === 'hangup' && session) {
    session.terminate();
  } else if (command === 'quit') {
    ua.stop();
    setTimeout(() => process.exit(0), 500);
  }
}).on('close', () => process.exit(0));

ua.start();
