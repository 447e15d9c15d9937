// Starts GraphiQL against this server's /graphql. Cookies are sent (same origin),
// so refreshToken and logout work from the playground too.
(function () {
  var fetcher = GraphiQL.createFetcher({ url: '/graphql', fetch: function (url, init) {
    return window.fetch(url, Object.assign({}, init, { credentials: 'same-origin' }));
  } });
  var root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(React.createElement(GraphiQL, {
    fetcher: fetcher,
    defaultEditorToolsVisibility: true,
    defaultQuery: '# Register, log in, then send the accessToken as a header:\n' +
      '# { "Authorization": "Bearer <accessToken>" }\n\n{\n  me {\n    id\n    email\n    role\n  }\n}\n'
  }));
})();
