package client

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/caddy-agentwrit/caddy-agentwrit/broker"
)

// Register defaults: the orch_id and task_id sent unless WithOrchID or
// WithTaskID say otherwise. They become part of the agent's SPIFFE ID
// (spiffe://<trust domain>/agent/<orch_id>/<task_id>/<instance>), and a
// task-level revocation of "default" reaches every agent that kept it.
const (
	DefaultOrchID = "default"
	DefaultTaskID = "default"
)

// Agent is a registered agent: its SPIFFE ID, token and key.
type Agent struct {
	ID        string             // SPIFFE ID, the sub of its tokens
	Token     string             // access token
	ExpiresIn time.Duration      // the token's lifetime when issued
	Key       ed25519.PrivateKey // the key whose public half was registered

	client *Client // the registering client, without its token
}

// Client returns a client that acts with the agent's token, for Renew,
// Release and Delegate. It is nil for an Agent not returned by Register.
func (a *Agent) Client() *Client {
	if a.client == nil {
		return nil
	}
	return a.client.WithToken(a.Token)
}

// RegisterOption configures Register.
type RegisterOption func(*registration) error

type registration struct {
	orchID, taskID string
	key            ed25519.PrivateKey
}

// WithOrchID sets the orch_id of the registration (default DefaultOrchID).
func WithOrchID(id string) RegisterOption {
	return func(r *registration) error { r.orchID = id; return nil }
}

// WithTaskID sets the task_id of the registration (default DefaultTaskID).
func WithTaskID(id string) RegisterOption {
	return func(r *registration) error { r.taskID = id; return nil }
}

// WithKey registers key instead of a freshly generated one.
func WithKey(key ed25519.PrivateKey) RegisterOption {
	return func(r *registration) error {
		if len(key) != ed25519.PrivateKeySize {
			return fmt.Errorf("WithKey: Ed25519 private key is %d bytes, want %d", len(key), ed25519.PrivateKeySize)
		}
		r.key = key
		return nil
	}
}

// Register registers an agent with a launch token and asks for scopes,
// which must lie within the launch token's allowed scope: it makes an
// Ed25519 key (unless WithKey gives one), fetches a nonce from GET
// /v1/challenge, signs it and POSTs /v1/register. The client's own token,
// if any, is not sent.
func (c *Client) Register(ctx context.Context, launchToken string, scopes []string, opts ...RegisterOption) (*Agent, error) {
	r := registration{orchID: DefaultOrchID, taskID: DefaultTaskID}
	for _, o := range opts {
		if err := o(&r); err != nil {
			return nil, fmt.Errorf("register: %w", err)
		}
	}
	if r.key == nil {
		_, key, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("register: generate key: %w", err)
		}
		r.key = key
	}
	ch, err := c.Challenge(ctx)
	if err != nil {
		return nil, fmt.Errorf("register: %w", err)
	}
	sig, err := SignNonce(r.key, ch.Nonce)
	if err != nil {
		return nil, fmt.Errorf("register: challenge: %w: %v", ErrMalformedAnswer, err)
	}
	res, err := c.RegisterRaw(ctx, broker.RegisterRequest{
		LaunchToken: launchToken, Nonce: ch.Nonce,
		PublicKey: PublicKey(r.key), Signature: sig,
		OrchID: r.orchID, TaskID: r.taskID, RequestedScope: scopes,
	})
	if err != nil {
		return nil, err
	}
	return &Agent{
		ID: res.AgentID, Token: res.AccessToken, ExpiresIn: time.Duration(res.ExpiresIn) * time.Second,
		Key: r.key, client: c.WithToken(""),
	}, nil
}

// RegisterRaw POSTs req to /v1/register as it is, for callers that build
// the registration themselves (see SignNonce and PublicKey).
func (c *Client) RegisterRaw(ctx context.Context, req broker.RegisterRequest) (*broker.RegisterResponse, error) {
	var out broker.RegisterResponse
	err := c.do(ctx, call{op: "register", method: http.MethodPost, path: "/v1/register", body: req, status: http.StatusOK}, &out)
	return ok(&out, err)
}

// SignNonce signs a /v1/challenge nonce for registration: the Ed25519
// signature of its hex-decoded bytes, in standard padded base64.
func SignNonce(key ed25519.PrivateKey, nonce string) (string, error) {
	if len(key) != ed25519.PrivateKeySize {
		return "", fmt.Errorf("sign nonce: Ed25519 private key is %d bytes, want %d", len(key), ed25519.PrivateKeySize)
	}
	msg, err := hex.DecodeString(nonce)
	if err != nil {
		return "", errors.New("sign nonce: nonce is not hex")
	}
	return base64.StdEncoding.EncodeToString(ed25519.Sign(key, msg)), nil
}

// PublicKey returns the public half of key in standard padded base64, as
// /v1/register takes it; "" for a key of the wrong size.
func PublicKey(key ed25519.PrivateKey) string {
	if len(key) != ed25519.PrivateKeySize {
		return ""
	}
	return base64.StdEncoding.EncodeToString(key.Public().(ed25519.PublicKey))
}
