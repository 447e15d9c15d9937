//! An SMTP server for tests, on 127.0.0.1, speaking enough of RFC 5321 for
//! lettre: it keeps every message it accepts; on demand it answers `MAIL`
//! with a refusal (`451` a temporary failure, `535` bad credentials), answers
//! `RCPT` for one address with a refusal (`550`), or takes its time over one
//! address's message; and it can be stopped and started again on the same
//! port (the server "down", then "back"). Written here rather than taken from
//! a crate: the tests need those faults on demand, and the one maintained
//! in-process sink (mailin-embedded) can neither stop nor build without a
//! second TLS stack.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

/// A message as the sink received it.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub to: Vec<String>,
    /// The message as sent (headers and body, dot-unstuffed).
    pub data: Vec<u8>,
}

impl Delivered {
    fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default().parse(&self.data).expect("a MIME message")
    }

    /// The `To` address.
    pub fn recipient(&self) -> String {
        let parsed = self.parsed();
        parsed.to().and_then(|to| to.first()).and_then(|a| a.address()).unwrap_or_default().to_owned()
    }

    pub fn subject(&self) -> String {
        self.parsed().subject().unwrap_or_default().to_owned()
    }

    /// The plain-text part, decoded.
    pub fn text(&self) -> String {
        self.parsed().body_text(0).expect("a text part").into_owned()
    }

    /// The HTML part, decoded.
    pub fn html(&self) -> String {
        self.parsed().body_html(0).expect("an HTML part").into_owned()
    }

    /// The link of the plain-text part: the first `http…?token=…`.
    pub fn link(&self) -> String {
        link_in(&self.text()).unwrap_or_else(|| panic!("no link in {:?}", self.text()))
    }

    /// The token of the link.
    pub fn token(&self) -> String {
        self.link().split_once("?token=").expect("a token").1.to_owned()
    }
}

/// The first link with a token in `text`.
pub fn link_in(text: &str) -> Option<String> {
    let start = text.find("http")?;
    let link: String = text[start..].chars().take_while(|c| !c.is_whitespace()).collect();
    link.contains("?token=").then_some(link)
}

/// What the sink is told to do besides accepting.
#[derive(Default)]
struct Faults {
    /// The answer to every `MAIL`, instead of 250.
    mail: Option<String>,
    /// The answer to `RCPT` for an address, instead of 250.
    rcpt: HashMap<String, String>,
    /// How long to wait before accepting a message to an address.
    slow: HashMap<String, Duration>,
    /// Addresses whose next message is held, its DATA read and unanswered,
    /// until [`SmtpSink::release`] gives the answer.
    hold: HashSet<String>,
    /// Held messages waiting for their answer, by address.
    held: HashMap<String, tokio::sync::oneshot::Sender<String>>,
    /// Answers given to held messages, by address, once written.
    answered: HashMap<String, usize>,
}

pub struct SmtpSink {
    pub addr: SocketAddr,
    messages: Arc<Mutex<Vec<Delivered>>>,
    /// The messages [`SmtpSink::next_mail`] handed out already (indexes).
    taken: Mutex<HashSet<usize>>,
    faults: Arc<Mutex<Faults>>,
    tasks: Option<JoinSet<()>>,
}

impl SmtpSink {
    /// Starts on a free port.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on `addr` (a port a stopped sink had: the server "back").
    pub async fn start_on(addr: SocketAddr) -> Self {
        let mut sink =
            Self { addr, messages: Arc::default(), taken: Mutex::default(), faults: Arc::default(), tasks: None };
        sink.listen().await;
        sink
    }

    async fn listen(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("bind the SMTP sink");
        self.addr = listener.local_addr().unwrap();
        let mut tasks = JoinSet::new();
        let (messages, faults) = (self.messages.clone(), self.faults.clone());
        tasks.spawn(async move {
            let mut sessions = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                sessions.spawn(session(stream, messages.clone(), faults.clone()));
            }
        });
        self.tasks = Some(tasks);
    }

    /// `smtp://127.0.0.1:<port>`: plain SMTP, as `SMTP_URL` takes it.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// While `on`, every message is answered `451` (try again later).
    pub fn refuse_temporarily(&self, on: bool) {
        self.answer_mail(on.then_some("451 4.3.0 try again later"));
    }

    /// Answers every `MAIL` with `reply` (a code and text), or 250 with `None`.
    pub fn answer_mail(&self, reply: Option<&str>) {
        self.faults.lock().unwrap().mail = reply.map(|r| format!("{r}\r\n"));
    }

    /// Answers `RCPT` for `to` with `reply`.
    pub fn refuse_recipient(&self, to: &str, reply: &str) {
        self.faults.lock().unwrap().rcpt.insert(to.to_ascii_lowercase(), format!("{reply}\r\n"));
    }

    /// Takes `wait` before accepting a message to `to`.
    pub fn slow_for(&self, to: &str, wait: Duration) {
        self.faults.lock().unwrap().slow.insert(to.to_ascii_lowercase(), wait);
    }

    /// Holds the next message to `to`: its DATA is read, and the answer
    /// waits for [`SmtpSink::release`] (a send in flight, for as long as the
    /// test needs).
    pub fn hold_next(&self, to: &str) {
        self.faults.lock().unwrap().hold.insert(to.to_ascii_lowercase());
    }

    /// Waits until a message to `to` is held.
    pub async fn wait_held(&self, to: &str) {
        let to = to.to_ascii_lowercase();
        crate::helpers::wait_until(
            || format!("a held message to {to}"),
            async || self.faults.lock().unwrap().held.contains_key(&to).then_some(()),
        )
        .await
    }

    /// Answers the held message to `to` with `reply` (`451 …` keeps it, `250
    /// …` takes it) and waits until the answer is written.
    pub async fn release(&self, to: &str, reply: &str) {
        let to = to.to_ascii_lowercase();
        let (answer, before) = {
            let mut faults = self.faults.lock().unwrap();
            let before = faults.answered.get(&to).copied().unwrap_or(0);
            (faults.held.remove(&to).expect("a held message"), before)
        };
        answer.send(format!("{reply}\r\n")).unwrap();
        crate::helpers::wait_until(
            || format!("the answer to the held message to {to}"),
            async || (self.faults.lock().unwrap().answered.get(&to).copied().unwrap_or(0) > before).then_some(()),
        )
        .await
    }

    /// Closes the port and every open connection.
    pub async fn stop(&mut self) {
        if let Some(mut tasks) = self.tasks.take() {
            tasks.shutdown().await;
        }
    }

    /// Starts again on the same port, keeping what was received.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.listen().await;
    }

    pub fn messages(&self) -> Vec<Delivered> {
        self.messages.lock().unwrap().clone()
    }

    /// The messages to `to`.
    pub fn to(&self, to: &str) -> Vec<Delivered> {
        self.messages().into_iter().filter(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(to))).collect()
    }

    /// Waits (up to 15 s) for a message to `to` whose subject contains
    /// `subject` and that no earlier call took, and takes it (the oldest such).
    /// Mail is sent by several tasks at once, so two mails queued close
    /// together may arrive in either order: a test names the mail it waits
    /// for, never its rank.
    pub async fn next_mail(&self, to: &str, subject: &str) -> Delivered {
        crate::helpers::wait_until(
            || format!("a mail to {to} about {subject:?}; the sink has {:?}", self.summary()),
            async || {
                let messages = self.messages.lock().unwrap();
                let mut taken = self.taken.lock().unwrap();
                let i = (0..messages.len()).find(|i| {
                    !taken.contains(i)
                        && messages[*i].to.iter().any(|t| t.eq_ignore_ascii_case(to))
                        && messages[*i].subject().contains(subject)
                })?;
                taken.insert(i);
                Some(messages[i].clone())
            },
        )
        .await
    }

    /// The subjects of the mail to `to`, sorted: what arrived, in no
    /// promised order.
    pub fn subjects_to(&self, to: &str) -> Vec<String> {
        let mut subjects: Vec<_> = self.to(to).iter().map(Delivered::subject).collect();
        subjects.sort();
        subjects
    }

    fn summary(&self) -> Vec<(Vec<String>, String)> {
        self.messages().iter().map(|m| (m.to.clone(), m.subject())).collect()
    }
}

/// One SMTP conversation.
async fn session(stream: TcpStream, messages: Arc<Mutex<Vec<Delivered>>>, faults: Arc<Mutex<Faults>>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let reply = async |w: &mut tokio::net::tcp::OwnedWriteHalf, text: &str| w.write_all(text.as_bytes()).await;
    if reply(&mut write, "220 sink ESMTP\r\n").await.is_err() {
        return;
    }
    let mut to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        let answer = match verb.as_str() {
            "EHLO" => "250-sink\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n".to_owned(),
            "HELO" | "NOOP" => "250 OK\r\n".to_owned(),
            "RSET" => {
                to.clear();
                "250 OK\r\n".to_owned()
            }
            "MAIL" => {
                to.clear();
                faults.lock().unwrap().mail.clone().unwrap_or_else(|| "250 OK\r\n".to_owned())
            }
            "RCPT" => {
                let addr = line.split_once(':').map(|(_, a)| a).unwrap_or_default();
                let addr = addr.trim().trim_start_matches('<').split('>').next().unwrap_or_default().to_owned();
                match faults.lock().unwrap().rcpt.get(&addr.to_ascii_lowercase()) {
                    Some(reply) => reply.clone(),
                    None => {
                        to.push(addr);
                        "250 OK\r\n".to_owned()
                    }
                }
            }
            "DATA" => {
                if reply(&mut write, "354 go ahead\r\n").await.is_err() {
                    return;
                }
                let mut data = Vec::new();
                loop {
                    let mut raw = Vec::new();
                    if lines.read_until(b'\n', &mut raw).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if raw == b".\r\n" {
                        break;
                    }
                    // Dot-unstuffing (RFC 5321 section 4.5.2).
                    data.extend_from_slice(if raw.starts_with(b"..") { &raw[1..] } else { &raw });
                }
                let wait =
                    to.iter().filter_map(|t| faults.lock().unwrap().slow.get(&t.to_ascii_lowercase()).copied()).max();
                if let Some(wait) = wait {
                    tokio::time::sleep(wait).await;
                }
                let held = {
                    let mut faults = faults.lock().unwrap();
                    let address = to.iter().map(|t| t.to_ascii_lowercase()).find(|t| faults.hold.contains(t));
                    address.map(|address| {
                        faults.hold.remove(&address);
                        let (answer, answered) = tokio::sync::oneshot::channel();
                        faults.held.insert(address.clone(), answer);
                        (address, answered)
                    })
                };
                if let Some((address, answered)) = held {
                    let answer_text = answered.await.unwrap_or_else(|_| "421 closing\r\n".to_owned());
                    let written = reply(&mut write, &answer_text).await;
                    *faults.lock().unwrap().answered.entry(address).or_default() += 1;
                    if written.is_err() {
                        return;
                    }
                    if answer_text.starts_with('2') {
                        messages.lock().unwrap().push(Delivered { to: std::mem::take(&mut to), data });
                    }
                    continue;
                }
                messages.lock().unwrap().push(Delivered { to: std::mem::take(&mut to), data });
                "250 OK queued\r\n".to_owned()
            }
            "QUIT" => {
                let _ = reply(&mut write, "221 bye\r\n").await;
                return;
            }
            _ => "502 5.5.2 not implemented\r\n".to_owned(),
        };
        if reply(&mut write, &answer).await.is_err() {
            return;
        }
    }
}
