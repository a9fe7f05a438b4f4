package transport

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"

	"github.com/cairn-db/cairn/raft"
)

// Wire format (all integers little-endian; see docs/transport.md).
//
// A connection starts with a hello from the dialer and a reply from the
// acceptor, both fixed-size so a garbage peer costs no allocation:
//
//	hello: magic[4] version[1] kind[1] reserved[2] cluster[8] from[8] to[8]
//	reply: magic[4] version[1] status[1] reserved[2] cluster[8] id[8]
//
// Everything after is frames:
//
//	frame: type[1] length[4] crc32c(payload)[4] payload[length]
//
// A batch frame's payload is a sequence of length[4] message[length],
// each message in raft.AppendMessage encoding.

const (
	protocolVersion = 1
	helloSize       = 32
	replySize       = 24
	frameHeaderSize = 9
	// msgHeaderSize is the length prefix of each message in a batch.
	msgHeaderSize = 4
)

var magic = [4]byte{'C', 'R', 'N', 'T'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Sentinel errors. They are wrapped with details; test with errors.Is.
var (
	// ErrClosed is returned by operations on a closed Transport.
	ErrClosed = errors.New("transport: closed")
	// ErrProtocol means a peer sent bytes that do not follow the protocol.
	ErrProtocol = errors.New("transport: protocol violation")
	// ErrChecksum means a frame's CRC32C did not match its payload.
	ErrChecksum = errors.New("transport: checksum mismatch")
	// ErrFrameTooLarge means a frame or message exceeds MaxMessageSize.
	ErrFrameTooLarge = errors.New("transport: frame exceeds MaxMessageSize")
	// ErrClusterMismatch means the peer belongs to another cluster.
	ErrClusterMismatch = errors.New("transport: cluster ID mismatch")
	// ErrWrongNode means the address answered with another node ID.
	ErrWrongNode = errors.New("transport: reached the wrong node")
	// ErrVersion means the peer speaks another protocol version.
	ErrVersion = errors.New("transport: unsupported protocol version")
	// ErrSnapshotRejected means the receiver did not accept a snapshot.
	ErrSnapshotRejected = errors.New("transport: snapshot rejected by peer")
)

// connKind says what a connection carries, chosen by the dialer.
type connKind uint8

const (
	kindMessages connKind = 1 // batch frames, one way
	kindSnapshot connKind = 2 // one snapshot stream and its acknowledgement
)

func (k connKind) String() string {
	switch k {
	case kindMessages:
		return "messages"
	case kindSnapshot:
		return "snapshot"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

type hello struct {
	version uint8
	kind    connKind
	cluster uint64
	from    uint64
	to      uint64
}

func (h *hello) marshal() [helloSize]byte {
	var b [helloSize]byte
	copy(b[:4], magic[:])
	b[4] = h.version
	b[5] = uint8(h.kind)
	binary.LittleEndian.PutUint64(b[8:], h.cluster)
	binary.LittleEndian.PutUint64(b[16:], h.from)
	binary.LittleEndian.PutUint64(b[24:], h.to)
	return b
}

// parseHello checks only the magic; the acceptor answers every other
// mismatch with a status so the dialer can log a precise reason.
func parseHello(b *[helloSize]byte) (hello, error) {
	if [4]byte(b[:4]) != magic {
		return hello{}, fmt.Errorf("%w: bad magic %q", ErrProtocol, b[:4])
	}
	return hello{
		version: b[4],
		kind:    connKind(b[5]),
		cluster: binary.LittleEndian.Uint64(b[8:]),
		from:    binary.LittleEndian.Uint64(b[16:]),
		to:      binary.LittleEndian.Uint64(b[24:]),
	}, nil
}

// Handshake reply statuses.
const (
	statusOK              = 0
	statusClusterMismatch = 1
	statusWrongNode       = 2
	statusBadVersion      = 3
	statusBadKind         = 4
	statusBadSender       = 5
)

type reply struct {
	version uint8
	status  uint8
	cluster uint64
	id      uint64
}

func (r *reply) marshal() [replySize]byte {
	var b [replySize]byte
	copy(b[:4], magic[:])
	b[4] = r.version
	b[5] = r.status
	binary.LittleEndian.PutUint64(b[8:], r.cluster)
	binary.LittleEndian.PutUint64(b[16:], r.id)
	return b
}

func parseReply(b *[replySize]byte) (reply, error) {
	if [4]byte(b[:4]) != magic {
		return reply{}, fmt.Errorf("%w: bad magic %q in handshake reply", ErrProtocol, b[:4])
	}
	return reply{
		version: b[4],
		status:  b[5],
		cluster: binary.LittleEndian.Uint64(b[8:]),
		id:      binary.LittleEndian.Uint64(b[16:]),
	}, nil
}

// Frame types.
const (
	frameBatch      = 1 // messages; payload: (length[4] message)*
	frameSnapHeader = 2 // payload: size[8] MsgSnap message with empty Data
	frameSnapChunk  = 3 // payload: snapshot bytes
	frameSnapEnd    = 4 // payload: total size[8]
	frameSnapAck    = 5 // payload: ok[1] reason
	frameTypeMax    = frameSnapAck
)

// putFrameHeader fills the first frameHeaderSize bytes of frame, whose
// payload follows them.
func putFrameHeader(frame []byte, typ byte) {
	payload := frame[frameHeaderSize:]
	frame[0] = typ
	binary.LittleEndian.PutUint32(frame[1:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(frame[5:], crc32.Checksum(payload, castagnoli))
}

// appendFrame appends a complete frame with the given payload to b.
func appendFrame(b []byte, typ byte, payload []byte) []byte {
	start := len(b)
	b = append(b, make([]byte, frameHeaderSize)...)
	b = append(b, payload...)
	putFrameHeader(b[start:], typ)
	return b
}

// frameReader reads frames from an untrusted stream. It allocates at most
// about twice the bytes actually received and never more than max (plus
// the header) for one frame, whatever length a header claims, and reuses
// its buffer between frames: a payload is valid until the next call.
type frameReader struct {
	r   io.Reader
	max int
	hdr [frameHeaderSize]byte
	buf []byte
}

// growStep is how much of a large payload is read before more memory is
// allocated, so a peer announcing a big frame and then stalling does not
// pin MaxMessageSize bytes.
const growStep = 64 << 10

// next returns the next frame. It returns io.EOF only at a frame boundary.
func (fr *frameReader) next() (typ byte, payload []byte, err error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		return 0, nil, err
	}
	typ = fr.hdr[0]
	n := binary.LittleEndian.Uint32(fr.hdr[1:])
	sum := binary.LittleEndian.Uint32(fr.hdr[5:])
	if typ == 0 || typ > frameTypeMax {
		return 0, nil, fmt.Errorf("%w: unknown frame type %d", ErrProtocol, typ)
	}
	if uint64(n) > uint64(fr.max) {
		return 0, nil, fmt.Errorf("%w: frame of %d bytes, limit %d", ErrFrameTooLarge, n, fr.max)
	}
	if int(n) <= cap(fr.buf) {
		fr.buf = fr.buf[:n]
		if _, err := io.ReadFull(fr.r, fr.buf); err != nil {
			return 0, nil, noEOF(err)
		}
	} else {
		fr.buf = fr.buf[:0]
		for len(fr.buf) < int(n) {
			step := min(int(n)-len(fr.buf), max(growStep, len(fr.buf)))
			fr.buf = slices.Grow(fr.buf, step)
			l := len(fr.buf)
			if _, err := io.ReadFull(fr.r, fr.buf[l:l+step]); err != nil {
				return 0, nil, noEOF(err)
			}
			fr.buf = fr.buf[:l+step]
		}
	}
	if crc32.Checksum(fr.buf, castagnoli) != sum {
		return 0, nil, fmt.Errorf("%w: frame type %d of %d bytes", ErrChecksum, typ, n)
	}
	return typ, fr.buf, nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// decodeBatch decodes the messages of a batch frame in order and hands
// each to fn, stopping at the first error. It never panics and allocates
// only what raft.UnmarshalMessage needs for the bytes present.
func decodeBatch(p []byte, fn func(raft.Message) error) error {
	if len(p) == 0 {
		return fmt.Errorf("%w: empty batch", ErrProtocol)
	}
	for i := 0; len(p) > 0; i++ {
		if len(p) < msgHeaderSize {
			return fmt.Errorf("%w: batch message %d: truncated length", ErrProtocol, i)
		}
		n := binary.LittleEndian.Uint32(p)
		p = p[msgHeaderSize:]
		if n == 0 || uint64(n) > uint64(len(p)) {
			return fmt.Errorf("%w: batch message %d: length %d, %d bytes left", ErrProtocol, i, n, len(p))
		}
		m, err := raft.UnmarshalMessage(p[:n])
		if err != nil {
			return fmt.Errorf("%w: batch message %d: %w", ErrProtocol, i, err)
		}
		p = p[n:]
		if err := fn(m); err != nil {
			return err
		}
	}
	return nil
}
