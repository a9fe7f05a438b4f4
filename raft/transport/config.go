package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/cairn-db/cairn/raft"
)

// Handler is the local Raft node as the transport sees it.
//
// Its methods are called from transport goroutines, and ReportUnreachable
// also from the goroutine that calls Send (when a queue overflows). None of
// them may block for long or call back into the Transport synchronously:
// a node driver typically forwards each call to its Raft loop through a
// buffered channel, dropping the report if the channel is full.
type Handler interface {
	// Process delivers a message received from a peer to the local node.
	// Messages from one peer connection are delivered one at a time and
	// in the order they were sent. ctx is cancelled when the Transport
	// closes, and Process must then return promptly. An error is logged
	// and, for a snapshot, turned into a failed acknowledgement.
	Process(ctx context.Context, m raft.Message) error
	// ReportUnreachable says that messages to peer id were dropped
	// because it could not be reached or its queue was full.
	ReportUnreachable(id uint64)
	// ReportSnapshot says whether the last snapshot sent to peer id was
	// made durable and accepted by that peer (ok) or not.
	ReportSnapshot(id uint64, ok bool)
}

// SnapshotStore gives the transport streaming access to the node's
// snapshot files, so a snapshot is never held in memory as a whole.
type SnapshotStore interface {
	// OpenSnapshot opens the snapshot covering the log up to index for
	// sending and returns its size in bytes. The transport closes the
	// reader when it is done; it reads exactly size bytes.
	OpenSnapshot(index uint64) (io.ReadCloser, int64, error)
	// SaveSnapshot consumes r to EOF and stores the bytes as the snapshot
	// described by meta. It must return only after the bytes are durable.
	// If r returns an error other than io.EOF (a corrupt or truncated
	// stream), SaveSnapshot must discard what it wrote and return an
	// error; it must return promptly once r fails.
	SaveSnapshot(meta raft.SnapshotMeta, r io.Reader) error
}

// DialFunc opens a connection; it has the signature of
// (*net.Dialer).DialContext so tests can inject faults.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Config configures a Transport. Zero values of optional fields get the
// defaults named in their comments.
type Config struct {
	// ID is this node's Raft ID; it must be non-zero.
	ID uint64
	// ClusterID identifies the cluster. Peers presenting a different
	// cluster ID are refused at handshake, which keeps a node of one
	// cluster from ever stepping messages of another.
	ClusterID uint64
	// Listener accepts peer connections. The Transport takes ownership
	// and closes it on Close. If nil, ListenAddr is listened on with TCP.
	Listener net.Listener
	// ListenAddr is used when Listener is nil, e.g. "127.0.0.1:0".
	ListenAddr string
	// Handler receives messages and reports. Required.
	Handler Handler
	// Snapshots streams snapshot bytes. Optional: without it, snapshots
	// whose message carries no Data cannot be sent, and incoming
	// snapshot streams are refused.
	Snapshots SnapshotStore
	// Logger receives connection events. Default: discard.
	Logger *slog.Logger
	// MaxMessageSize bounds the payload of one frame, and so the memory
	// one peer connection can make this node allocate. A message that
	// cannot fit is dropped on the sending side; a peer sending a bigger
	// frame is disconnected. All nodes of a cluster should agree on it.
	// Default 16 MiB.
	MaxMessageSize int
	// SnapshotChunkSize is the number of snapshot bytes per chunk frame,
	// each with its own CRC32C. At most MaxMessageSize. Default 1 MiB, or
	// MaxMessageSize if that is smaller.
	SnapshotChunkSize int
	// QueueSize bounds the messages waiting to be written to one peer.
	// Send drops messages beyond it. Default 4096.
	QueueSize int
	// DialTimeout bounds connecting to a peer plus the handshake, in both
	// directions. Default 5s.
	DialTimeout time.Duration
	// WriteTimeout bounds writing one batch (a batch gets between 3/4 and
	// all of it: the deadline is moved only when a quarter has passed) or
	// one snapshot chunk; a receiving snapshot stream that stays silent
	// this long is aborted.
	// Default 10s.
	WriteTimeout time.Duration
	// SnapshotAckTimeout bounds how long a sender waits, after the last
	// chunk, for the receiver to make the snapshot durable. Default 2m.
	SnapshotAckTimeout time.Duration
	// BackoffMin and BackoffMax bound the delay between connection
	// attempts to an unreachable peer. The delay doubles per failure
	// from BackoffMin up to BackoffMax, and each wait is jittered to
	// [d/2, d]. Defaults 100ms and 5s.
	BackoffMin, BackoffMax time.Duration
	// Dialer opens outbound connections. Default: a net.Dialer with
	// TCP keep-alive.
	Dialer DialFunc
}

// ErrInvalidConfig is wrapped by the errors Validate returns.
var ErrInvalidConfig = errors.New("transport: invalid config")

const (
	defaultMaxMessageSize     = 16 << 20
	defaultSnapshotChunkSize  = 1 << 20
	defaultQueueSize          = 4096
	defaultDialTimeout        = 5 * time.Second
	defaultWriteTimeout       = 10 * time.Second
	defaultSnapshotAckTimeout = 2 * time.Minute
	defaultBackoffMin         = 100 * time.Millisecond
	defaultBackoffMax         = 5 * time.Second

	// minMaxMessageSize keeps every protocol frame (handshake-sized
	// control frames, snapshot headers) representable.
	minMaxMessageSize = 1 << 10
	// maxMaxMessageSize keeps frame lengths within the 32-bit header.
	maxMaxMessageSize = 1 << 30
)

// Validate checks c and fills in defaults.
func (c *Config) Validate() error {
	if c.ID == raft.None {
		return fmt.Errorf("%w: ID must not be 0", ErrInvalidConfig)
	}
	if c.Handler == nil {
		return fmt.Errorf("%w: Handler must not be nil", ErrInvalidConfig)
	}
	if c.Listener == nil && c.ListenAddr == "" {
		return fmt.Errorf("%w: one of Listener and ListenAddr must be set", ErrInvalidConfig)
	}
	if c.Listener != nil && c.ListenAddr != "" {
		return fmt.Errorf("%w: only one of Listener and ListenAddr may be set", ErrInvalidConfig)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	setDefault(&c.MaxMessageSize, defaultMaxMessageSize)
	setDefault(&c.QueueSize, defaultQueueSize)
	setDefault(&c.DialTimeout, defaultDialTimeout)
	setDefault(&c.WriteTimeout, defaultWriteTimeout)
	setDefault(&c.SnapshotAckTimeout, defaultSnapshotAckTimeout)
	setDefault(&c.BackoffMin, defaultBackoffMin)
	setDefault(&c.BackoffMax, defaultBackoffMax)
	if c.MaxMessageSize < minMaxMessageSize || c.MaxMessageSize > maxMaxMessageSize {
		return fmt.Errorf("%w: MaxMessageSize %d outside [%d, %d]", ErrInvalidConfig, c.MaxMessageSize, minMaxMessageSize, maxMaxMessageSize)
	}
	setDefault(&c.SnapshotChunkSize, min(defaultSnapshotChunkSize, c.MaxMessageSize))
	if c.SnapshotChunkSize < 0 || c.SnapshotChunkSize > c.MaxMessageSize {
		return fmt.Errorf("%w: SnapshotChunkSize %d must be in (0, MaxMessageSize=%d]", ErrInvalidConfig, c.SnapshotChunkSize, c.MaxMessageSize)
	}
	if c.QueueSize < 0 {
		return fmt.Errorf("%w: QueueSize must be positive", ErrInvalidConfig)
	}
	if c.DialTimeout < 0 || c.WriteTimeout < 0 || c.SnapshotAckTimeout < 0 || c.BackoffMin < 0 {
		return fmt.Errorf("%w: timeouts must be positive", ErrInvalidConfig)
	}
	if c.BackoffMax < c.BackoffMin {
		return fmt.Errorf("%w: BackoffMax (%v) is below BackoffMin (%v)", ErrInvalidConfig, c.BackoffMax, c.BackoffMin)
	}
	if c.Dialer == nil {
		d := &net.Dialer{KeepAlive: 15 * time.Second}
		c.Dialer = d.DialContext
	}
	return nil
}

func setDefault[T int | time.Duration](p *T, def T) {
	if *p == 0 {
		*p = def
	}
}
