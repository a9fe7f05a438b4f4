package kv

import (
	"encoding/binary"
	"fmt"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// Command is one replicated write. It is encoded into a raft log entry with
// Marshal and decoded by Store.Apply on every replica.
//
// Exactly one of Put, DeleteRange, Txn and Append must be set; Apply
// answers any other command with an InvalidArgument error.
type Command struct {
	// ClientID names an exactly-once session; 0 means no session.
	ClientID uint64
	// Seq is the client's sequence number for this command, starting at 1.
	Seq uint64
	// Time is the proposer's wall clock in Unix nanoseconds. It is the only
	// time the state machine sees (it drives session garbage collection), so
	// every replica makes the same decisions.
	Time int64

	Put         *pb.PutRequest
	DeleteRange *pb.DeleteRangeRequest
	Txn         *pb.TxnRequest
	Append      *AppendRequest // Cairn extension
}

// AppendRequest atomically appends Value to the current value of Key,
// creating Key if it does not exist.
type AppendRequest struct {
	Key, Value []byte
}

// AppendResponse answers an AppendRequest.
type AppendResponse struct {
	// Revision is the store revision the append created.
	Revision int64
	// Length is the length in bytes of the key's new value.
	Length int64
}

// commandVersion is the first byte of every encoded command.
const commandVersion = 1

// Section tags of an encoded command.
const (
	tagPut         = 1
	tagDeleteRange = 2
	tagTxn         = 3
	tagAppend      = 4
)

// marshaler is what the generated protobuf types provide.
type marshaler interface {
	Size() int
	MarshalToSizedBuffer([]byte) (int, error)
}

// Marshal encodes c compactly: a version byte, the session fields as
// varints, then one tagged, length-prefixed section per request that is
// set (protobuf messages in their own wire format). The encoding is
// deterministic: equal commands encode to equal bytes.
func (c *Command) Marshal() []byte {
	return c.AppendMarshal(make([]byte, 0, c.MaxSize()))
}

// MaxSize bounds the length of the command's encoding.
func (c *Command) MaxSize() int { return 1 + 3*binary.MaxVarintLen64 + c.payloadSize() }

// AppendMarshal appends the command's encoding (Marshal) to b.
func (c *Command) AppendMarshal(b []byte) []byte {
	b = append(b, commandVersion)
	b = binary.AppendUvarint(b, c.ClientID)
	b = binary.AppendUvarint(b, c.Seq)
	b = binary.AppendVarint(b, c.Time)
	if c.Put != nil {
		b = appendMessage(b, tagPut, c.Put)
	}
	if c.DeleteRange != nil {
		b = appendMessage(b, tagDeleteRange, c.DeleteRange)
	}
	if c.Txn != nil {
		b = appendMessage(b, tagTxn, c.Txn)
	}
	if c.Append != nil {
		n := uvarintLen(uint64(len(c.Append.Key))) + len(c.Append.Key) + len(c.Append.Value)
		b = append(b, tagAppend)
		b = binary.AppendUvarint(b, uint64(n))
		b = binary.AppendUvarint(b, uint64(len(c.Append.Key)))
		b = append(b, c.Append.Key...)
		b = append(b, c.Append.Value...)
	}
	return b
}

func (c *Command) payloadSize() int {
	n := 0
	if c.Put != nil {
		n += 1 + binary.MaxVarintLen64 + c.Put.Size()
	}
	if c.DeleteRange != nil {
		n += 1 + binary.MaxVarintLen64 + c.DeleteRange.Size()
	}
	if c.Txn != nil {
		n += 1 + binary.MaxVarintLen64 + c.Txn.Size()
	}
	if c.Append != nil {
		n += 1 + 2*binary.MaxVarintLen64 + len(c.Append.Key) + len(c.Append.Value)
	}
	return n
}

// appendMessage appends one tagged section holding m's wire encoding.
func appendMessage(b []byte, tag byte, m marshaler) []byte {
	return appendSizedMessage(b, tag, m, m.Size())
}

// appendSizedMessage is appendMessage for a caller that knows n = m.Size().
func appendSizedMessage(b []byte, tag byte, m marshaler, n int) []byte {
	b = append(b, tag)
	b = binary.AppendUvarint(b, uint64(n))
	start := len(b)
	b = append(b, make([]byte, n)...)
	if _, err := m.MarshalToSizedBuffer(b[start:]); err != nil {
		// The generated code fails only on a oneof holding a type it does
		// not know, which cannot be built from this package's types.
		panic(fmt.Sprintf("kv: marshal %T: %v", m, err))
	}
	return b
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// UnmarshalCommand decodes a command encoded by Command.Marshal. It never
// panics; every error wraps ErrCorruptCommand.
func UnmarshalCommand(b []byte) (c *Command, err error) {
	defer func() {
		// The protobuf decoders are generated code that checks its bounds;
		// this is a last line of defence so that one bad log entry cannot
		// crash every replica that applies it.
		if r := recover(); r != nil {
			c, err = nil, fmt.Errorf("%w: decoder panic: %v", ErrCorruptCommand, r)
		}
	}()
	d := decoder{b: b}
	if v := d.byte(); d.err == nil && v != commandVersion {
		return nil, fmt.Errorf("%w: unknown encoding version %d", ErrCorruptCommand, v)
	}
	clientID, seq, now := d.uvarint(), d.uvarint(), d.varint()
	// A put, the command applied most, is allocated with its request.
	var put *pb.PutRequest
	if d.err == nil && len(d.b) > 0 && d.b[0] == tagPut {
		pc := &putCommand{}
		c, put = &pc.cmd, &pc.put
	} else {
		c = &Command{}
	}
	c.ClientID, c.Seq, c.Time = clientID, seq, now
	for d.err == nil && len(d.b) > 0 {
		tag := d.byte()
		body := d.bytes(d.uvarint())
		if d.err != nil {
			break
		}
		switch tag {
		case tagPut:
			if c.Put != nil {
				return nil, fmt.Errorf("%w: duplicate put section", ErrCorruptCommand)
			}
			if put == nil {
				put = &pb.PutRequest{}
			}
			c.Put = put
			presizePut(put, body)
			err = put.Unmarshal(body)
		case tagDeleteRange:
			if c.DeleteRange != nil {
				return nil, fmt.Errorf("%w: duplicate delete_range section", ErrCorruptCommand)
			}
			c.DeleteRange = &pb.DeleteRangeRequest{}
			err = c.DeleteRange.Unmarshal(body)
		case tagTxn:
			if c.Txn != nil {
				return nil, fmt.Errorf("%w: duplicate txn section", ErrCorruptCommand)
			}
			c.Txn = &pb.TxnRequest{}
			err = c.Txn.Unmarshal(body)
		case tagAppend:
			if c.Append != nil {
				return nil, fmt.Errorf("%w: duplicate append section", ErrCorruptCommand)
			}
			ad := decoder{b: body}
			key := ad.bytes(ad.uvarint())
			if ad.err != nil {
				return nil, fmt.Errorf("%w: append: %v", ErrCorruptCommand, ad.err)
			}
			c.Append = &AppendRequest{Key: clone(key), Value: clone(ad.b)}
		default:
			return nil, fmt.Errorf("%w: unknown section tag %d", ErrCorruptCommand, tag)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: section %d: %v", ErrCorruptCommand, tag, err)
		}
	}
	if d.err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorruptCommand, d.err)
	}
	return c, nil
}

// putCommand is a Command with room for its PutRequest, so that decoding a
// put allocates them together.
type putCommand struct {
	cmd Command
	put pb.PutRequest
}

// presizePut prepares req, before req.Unmarshal(body), so that decoding
// copies the key and the value into one allocation instead of two: it
// points req.Key and req.Value at disjoint parts of one buffer sized from
// body, and the generated decoder appends each field into the capacity it
// finds. Only a field whose last occurrence (the one that wins) is not
// empty gets a part, so a missing or empty field decodes exactly as it
// would without this; a repeated field longer than its part, or malformed
// input, is left to the decoder (which allocates, or fails, as usual).
func presizePut(req *pb.PutRequest, body []byte) {
	var klen, vlen int
	for len(body) > 0 {
		tag, n := binary.Uvarint(body)
		if n <= 0 {
			return
		}
		body = body[n:]
		switch tag & 7 {
		case 0: // varint: lease, prev_kv, ignore_value, ignore_lease
			if _, n = binary.Uvarint(body); n <= 0 {
				return
			}
			body = body[n:]
		case 2: // length-delimited: key, value
			l, n := binary.Uvarint(body)
			if n <= 0 || l > uint64(len(body)-n) {
				return
			}
			body = body[n+int(l):]
			switch tag >> 3 {
			case 1:
				klen = int(l)
			case 2:
				vlen = int(l)
			}
		default:
			return
		}
	}
	if klen+vlen == 0 {
		return
	}
	buf := make([]byte, klen+vlen)
	if klen > 0 {
		req.Key = buf[:0:klen]
	}
	if vlen > 0 {
		req.Value = buf[klen:klen:len(buf)]
	}
}

// clone copies b; the store keeps what it decodes, so it must not alias
// the caller's entry buffer.
func clone(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}

// decoder reads the varint framing shared by commands and results. The
// first failure sticks in err; later reads return zero values.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("truncated or malformed %s", what)
	}
}

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) == 0 {
		d.fail("byte")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("uvarint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// bytes returns the next n bytes, aliasing the input.
func (d *decoder) bytes(n uint64) []byte {
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("length-prefixed field")
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}
