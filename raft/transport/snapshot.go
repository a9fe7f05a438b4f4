package transport

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/cairn-db/cairn/raft"
)

// Snapshot stream, on its own connection of kind kindSnapshot:
//
//	sender → receiver: SnapHeader(size[8], MsgSnap with empty Data)
//	                   SnapChunk* (each ≤ SnapshotChunkSize, own CRC32C)
//	                   SnapEnd(size[8])
//	receiver → sender: SnapAck(ok[1], reason)
//
// The receiver pipes chunk payloads into SnapshotStore.SaveSnapshot as they
// arrive and hands it EOF only after the last chunk checked out and the
// total matched; any bad chunk instead fails the pipe, so SaveSnapshot
// never sees a clean end of a corrupt stream. Handler.Process gets the
// MsgSnap only after SaveSnapshot returned nil, and the ack follows.

// maxAckReason bounds the failure text carried in an ack.
const maxAckReason = 512

// ackFrameLimit bounds what the sender accepts as an ack frame.
const ackFrameLimit = 1 + maxAckReason

// startSnapshot launches the stream of m unless one is already in flight
// to this peer. It never blocks.
func (p *peer) startSnapshot(m raft.Message) {
	t := p.t
	if m.Snapshot == nil || m.Snapshot.IsEmpty() {
		t.stats.dropped.Add(1)
		t.log.Error("transport: dropping MsgSnap without snapshot metadata", "peer", p.id)
		t.cfg.Handler.ReportSnapshot(p.id, false)
		return
	}
	if !p.snapBusy.CompareAndSwap(false, true) {
		// Raft sends one snapshot per follower at a time and waits for
		// ReportSnapshot; the stream in flight will report.
		t.stats.dropped.Add(1)
		t.log.Debug("transport: snapshot already in flight, dropping another", "peer", p.id, "index", m.Snapshot.Meta.Index)
		return
	}
	if !t.spawn(func() { p.sendSnapshot(m) }) {
		p.snapBusy.Store(false)
		t.stats.dropped.Add(1)
	}
}

// sendSnapshot is the goroutine that streams one snapshot and reports the
// outcome.
func (p *peer) sendSnapshot(m raft.Message) {
	t := p.t
	start := time.Now()
	size, err := p.streamSnapshot(m)
	if err != nil {
		t.stats.snapsFailed.Add(1)
		if p.ctx.Err() == nil {
			t.log.Warn("transport: sending snapshot failed", "peer", p.id, "index", m.Snapshot.Meta.Index, "err", err)
		}
	} else {
		t.stats.snapsSent.Add(1)
		t.log.Info("transport: sent snapshot", "peer", p.id, "index", m.Snapshot.Meta.Index,
			"bytes", size, "duration", time.Since(start))
	}
	// Free the slot before reporting: Raft may answer the report with the
	// next snapshot at once, which must not be dropped as "in flight".
	p.snapBusy.Store(false)
	t.cfg.Handler.ReportSnapshot(p.id, err == nil)
}

func (p *peer) streamSnapshot(m raft.Message) (int64, error) {
	t := p.t
	var (
		r    io.Reader
		size int64
	)
	if len(m.Snapshot.Data) > 0 {
		r, size = bytes.NewReader(m.Snapshot.Data), int64(len(m.Snapshot.Data))
	} else {
		if t.cfg.Snapshots == nil {
			return 0, errors.New("no SnapshotStore configured to read the snapshot from")
		}
		rc, n, err := t.cfg.Snapshots.OpenSnapshot(m.Snapshot.Meta.Index)
		if err != nil {
			return 0, fmt.Errorf("open snapshot %d: %w", m.Snapshot.Meta.Index, err)
		}
		defer rc.Close()
		if n < 0 {
			return 0, fmt.Errorf("open snapshot %d: negative size %d", m.Snapshot.Meta.Index, n)
		}
		r, size = rc, n
	}
	addr := p.getAddr()
	c, err := p.connect(kindSnapshot, addr)
	if err != nil {
		return 0, err
	}
	defer t.untrack(c)

	// Header: the message without its data, preceded by the size.
	hdr := m
	hdr.Snapshot = &raft.Snapshot{Meta: m.Snapshot.Meta}
	payload := binary.LittleEndian.AppendUint64(nil, uint64(size))
	payload = raft.AppendMessage(payload, &hdr)
	if len(payload) > t.cfg.MaxMessageSize {
		return 0, fmt.Errorf("%w: snapshot header of %d bytes for peer %d", ErrFrameTooLarge, len(payload), p.id)
	}
	if err := p.writeFrame(c, appendFrame(nil, frameSnapHeader, payload)); err != nil {
		return 0, err
	}

	// Chunks: read straight into the frame buffer behind the header room.
	frame := make([]byte, frameHeaderSize+int(min(int64(t.cfg.SnapshotChunkSize), max(size, 1))))
	for sent := int64(0); sent < size; {
		n := int(min(int64(len(frame)-frameHeaderSize), size-sent))
		if _, err := io.ReadFull(r, frame[frameHeaderSize:frameHeaderSize+n]); err != nil {
			return 0, fmt.Errorf("read snapshot %d at offset %d of %d: %w", m.Snapshot.Meta.Index, sent, size, err)
		}
		putFrameHeader(frame[:frameHeaderSize+n], frameSnapChunk)
		if err := p.writeFrame(c, frame[:frameHeaderSize+n]); err != nil {
			return 0, err
		}
		sent += int64(n)
	}
	var one [1]byte
	if n, _ := io.ReadFull(r, one[:]); n != 0 {
		return 0, fmt.Errorf("snapshot %d is longer than its declared %d bytes", m.Snapshot.Meta.Index, size)
	}
	end := appendFrame(nil, frameSnapEnd, binary.LittleEndian.AppendUint64(nil, uint64(size)))
	if err := p.writeFrame(c, end); err != nil {
		return 0, err
	}

	// Ack: the receiver answers after SaveSnapshot made the bytes durable.
	if err := p.readAck(c, t.cfg.SnapshotAckTimeout); err != nil {
		return 0, err
	}
	return size, nil
}

// readAck waits up to timeout for the receiver's verdict.
func (p *peer) readAck(c net.Conn, timeout time.Duration) error {
	c.SetReadDeadline(time.Now().Add(timeout))
	fr := frameReader{r: c, max: ackFrameLimit}
	typ, ack, err := fr.next()
	if err != nil {
		return fmt.Errorf("await snapshot ack from peer %d: %w", p.id, err)
	}
	if typ != frameSnapAck || len(ack) == 0 {
		return fmt.Errorf("%w: peer %d answered a snapshot with frame type %d", ErrProtocol, p.id, typ)
	}
	if ack[0] != 1 {
		return fmt.Errorf("%w: peer %d: %s", ErrSnapshotRejected, p.id, ack[1:])
	}
	return nil
}

// rejectionWait bounds how long a sender whose stream broke looks for
// the receiver's rejection, which usually explains the break.
const rejectionWait = time.Second

func (p *peer) writeFrame(c net.Conn, frame []byte) error {
	c.SetWriteDeadline(time.Now().Add(p.t.cfg.WriteTimeout))
	if _, err := c.Write(frame); err != nil {
		err = fmt.Errorf("write snapshot stream to peer %d: %w", p.id, err)
		// A receiver that rejects the stream (bad chunk, failed save)
		// sends its reason and closes; prefer that reason if it arrived.
		if p.ctx.Err() == nil {
			if aerr := p.readAck(c, rejectionWait); errors.Is(aerr, ErrSnapshotRejected) {
				return fmt.Errorf("%w (%w)", aerr, err)
			}
		}
		return err
	}
	p.t.stats.bytesSent.Add(uint64(len(frame)))
	return nil
}

// errSaveReturned fails the pipe's writer if SaveSnapshot returns before
// it has read the whole stream.
var errSaveReturned = errors.New("transport: SaveSnapshot returned before the end of the stream")

// receiveSnapshot serves one inbound snapshot stream.
func (t *Transport) receiveSnapshot(c net.Conn, from uint64, remote string) {
	fr := frameReader{r: bufio.NewReaderSize(c, 64<<10), max: t.cfg.MaxMessageSize}
	c.SetReadDeadline(time.Now().Add(t.cfg.WriteTimeout))
	typ, payload, err := fr.next()
	if err == nil && (typ != frameSnapHeader || len(payload) < 8) {
		err = fmt.Errorf("%w: expected a snapshot header, got frame type %d of %d bytes", ErrProtocol, typ, len(payload))
	}
	var m raft.Message
	if err == nil {
		m, err = raft.UnmarshalMessage(payload[8:])
		if err != nil {
			err = fmt.Errorf("%w: snapshot header: %w", ErrProtocol, err)
		}
	}
	if err == nil {
		err = t.checkSnapshotHeader(&m, from)
	}
	if err != nil {
		if !isProtocolErr(err) {
			t.log.Debug("transport: snapshot stream ended before its header", "remote", remote, "peer", from, "err", err)
			return
		}
		t.reject(remote, from, "snapshot header", err)
		return
	}
	size := binary.LittleEndian.Uint64(payload)
	meta := m.Snapshot.Meta
	log := t.log.With("remote", remote, "peer", from, "index", meta.Index, "size", size)
	if t.cfg.Snapshots == nil {
		log.Warn("transport: refusing snapshot: no SnapshotStore configured")
		t.sendAck(c, errors.New("receiver has no SnapshotStore"))
		return
	}

	pr, pw := io.Pipe()
	saved := make(chan error, 1)
	if !t.spawn(func() {
		err := t.cfg.Snapshots.SaveSnapshot(meta, pr)
		pr.CloseWithError(errSaveReturned)
		saved <- err
	}) {
		return
	}
	err = t.pumpSnapshot(c, &fr, pw, size)
	if err != nil {
		pw.CloseWithError(err)
	} else {
		pw.Close()
	}
	saveErr := <-saved
	switch {
	case errors.Is(err, errSaveReturned) && saveErr != nil:
		err = fmt.Errorf("SaveSnapshot: %w", saveErr)
	case errors.Is(err, errSaveReturned):
		err = errors.New("SaveSnapshot returned nil before reading the whole stream")
	case err != nil:
		err = fmt.Errorf("receive stream: %w", err)
	case saveErr != nil:
		err = fmt.Errorf("SaveSnapshot: %w", saveErr)
	default:
		if perr := t.cfg.Handler.Process(t.ctx, m); perr != nil {
			err = fmt.Errorf("Process: %w", perr)
		}
	}
	if err != nil {
		if t.ctx.Err() == nil {
			log.Warn("transport: snapshot not installed", "err", err)
		}
		t.sendAck(c, err)
		return
	}
	t.stats.snapsSaved.Add(1)
	log.Info("transport: received snapshot")
	t.sendAck(c, nil)
}

// checkSnapshotHeader rejects a snapshot header the peer may not send.
func (t *Transport) checkSnapshotHeader(m *raft.Message, from uint64) error {
	switch {
	case m.Type != raft.MsgSnap:
		return fmt.Errorf("%w: %s on a snapshot stream", ErrProtocol, m.Type)
	case m.Snapshot == nil || m.Snapshot.IsEmpty():
		return fmt.Errorf("%w: MsgSnap without snapshot metadata", ErrProtocol)
	case len(m.Snapshot.Data) != 0:
		return fmt.Errorf("%w: snapshot header carries %d data bytes", ErrProtocol, len(m.Snapshot.Data))
	case m.From != from:
		return fmt.Errorf("%w: MsgSnap claims sender %d on a connection from node %d", ErrProtocol, m.From, from)
	case m.To != t.cfg.ID:
		return fmt.Errorf("%w: MsgSnap addressed to node %d arrived at node %d", ErrProtocol, m.To, t.cfg.ID)
	}
	return nil
}

// pumpSnapshot copies verified chunk payloads into w until the end frame.
func (t *Transport) pumpSnapshot(c net.Conn, fr *frameReader, w io.Writer, size uint64) error {
	var got uint64
	for {
		c.SetReadDeadline(time.Now().Add(t.cfg.WriteTimeout))
		typ, payload, err := fr.next()
		if err != nil {
			return fmt.Errorf("after %d of %d bytes: %w", got, size, err)
		}
		t.stats.bytesRecv.Add(uint64(frameHeaderSize + len(payload)))
		switch typ {
		case frameSnapChunk:
			got += uint64(len(payload))
			if got > size {
				return fmt.Errorf("%w: snapshot stream exceeds its declared %d bytes", ErrProtocol, size)
			}
			// io.Pipe returns only once the reader consumed every byte,
			// so the frame buffer may be reused afterwards.
			if _, err := w.Write(payload); err != nil {
				return err
			}
		case frameSnapEnd:
			if len(payload) != 8 || binary.LittleEndian.Uint64(payload) != size || got != size {
				return fmt.Errorf("%w: snapshot stream ended after %d bytes, declared %d", ErrProtocol, got, size)
			}
			return nil
		default:
			return fmt.Errorf("%w: frame type %d inside a snapshot stream", ErrProtocol, typ)
		}
	}
}

// sendAck tells the sender the outcome; best effort, the sender treats a
// lost ack as failure.
func (t *Transport) sendAck(c net.Conn, err error) {
	p := []byte{1}
	if err != nil {
		reason := err.Error()
		if len(reason) > maxAckReason {
			reason = reason[:maxAckReason]
		}
		p = append([]byte{0}, reason...)
	}
	c.SetWriteDeadline(time.Now().Add(t.cfg.WriteTimeout))
	c.Write(appendFrame(nil, frameSnapAck, p))
}
